package main

import (
	"strings"
)

// commandTable is every meshctl command. Each group lives in its own file and contributes its
// commands here; a new group (such as `meshctl dev`) adds one line.
func commandTable() []*command {
	var all []*command
	for _, group := range [][]*command{
		domainCommands(),
		serviceCommands(),
		providerCommands(),
		instanceCommands(),
		tokenCommands(),
		csrCommands(),
		applyCommands(),
		caCommands(),
		rotateCommands(),
		trustCommands(),
		clusterCommands(),
		eventCommands(),
		devCommands(),
		agentCommands(),
	} {
		all = append(all, group...)
	}
	return all
}

// stringList is a repeatable string flag.
type stringList []string

// String joins the values.
func (l *stringList) String() string { return strings.Join(*l, ",") }

// Set adds a value.
func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}
