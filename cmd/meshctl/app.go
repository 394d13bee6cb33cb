package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the call failed, or the server refused it
	exitUsage = 2 // the command line is wrong
)

// errUsage marks a command line error: meshctl prints the command's usage hint and exits 2.
var errUsage = errors.New("usage")

// usageError is a command line error that names what is wrong.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// runFunc runs a command with its positional arguments.
type runFunc func(ctx context.Context, inv *invocation, args []string) error

// command is one leaf of the command tree, e.g. "domain add".
type command struct {
	// path is the words that select the command, e.g. "domain add".
	path string
	// args describes the positional arguments for the usage line, e.g. "NAME [PRINCIPAL...]".
	args string
	// summary is one line for the command list.
	summary string
	// minArgs and maxArgs bound the positional arguments (maxArgs < 0: no bound).
	minArgs, maxArgs int
	// noClient marks a command that never dials the admin API (it takes no connection flags).
	noClient bool
	// stream marks a command without a per-call deadline (it runs until interrupted).
	stream bool
	// setup declares the command's own flags on fs and returns the function that runs it with
	// their values.
	setup func(fs *flag.FlagSet) runFunc
}

// app is one meshctl run: where it writes and where it reads its environment.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// configDir is the per-user config folder (os.UserConfigDir).
	configDir func() (string, error)
	// commands is the command table.
	commands []*command
}

// newApp returns meshctl with the full command table.
func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, configDir: os.UserConfigDir, commands: commandTable()}
}

// run runs the command line args (without the program name) and returns the exit code. Every
// failure is printed as one line: "meshctl: <command>: <what went wrong>".
func (a *app) run(ctx context.Context, args []string) int {
	var global connFlags
	gfs := flag.NewFlagSet("meshctl", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	global.register(gfs)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printCommands(a.stdout, nil)
			return exitOK
		}
		fmt.Fprintf(a.stderr, "meshctl: %v\n", err)
		return exitUsage
	}
	rest := gfs.Args()
	if len(rest) == 0 || rest[0] == "help" {
		w := a.stderr
		code := exitUsage
		if len(rest) > 0 {
			w, code = a.stdout, exitOK
		}
		a.printCommands(w, rest[min(1, len(rest)):])
		return code
	}
	cmd, words := a.lookup(rest)
	switch {
	case cmd == nil && words == 0:
		fmt.Fprintf(a.stderr, "meshctl: unknown command %q (run \"meshctl help\" for the list)\n", rest[0])
		return exitUsage
	case cmd == nil && (words == len(rest) || strings.HasPrefix(rest[words], "-")):
		fmt.Fprintf(a.stderr, "meshctl: %s: a subcommand is required\n", strings.Join(rest[:words], " "))
		a.printCommands(a.stderr, rest[:words])
		return exitUsage
	case cmd == nil:
		fmt.Fprintf(a.stderr, "meshctl: unknown command %q\n", strings.Join(rest[:words+1], " "))
		a.printCommands(a.stderr, rest[:words])
		return exitUsage
	}
	return a.runCommand(ctx, cmd, global, gfs, rest[words:])
}

// runCommand parses a command's flags and arguments and runs it.
func (a *app) runCommand(ctx context.Context, cmd *command, global connFlags, gfs *flag.FlagSet, args []string) int {
	fs := flag.NewFlagSet("meshctl "+cmd.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	conn := global
	if !cmd.noClient {
		conn.register(fs)
		// Flags given before the command keep their values unless repeated after it.
		gfs.Visit(func(f *flag.Flag) { _ = fs.Set(f.Name, f.Value.String()) })
	}
	run := cmd.setup(fs)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		a.printUsage(a.stdout, cmd, fs)
		return exitOK
	}
	if err == nil {
		switch {
		case len(pos) < cmd.minArgs:
			err = usageError("expected %s", orNone(cmd.args))
		case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
			err = usageError("unexpected argument %q (expected %s)", pos[cmd.maxArgs], orNone(cmd.args))
		}
	} else {
		err = usageError("%v", err)
	}
	if err != nil {
		return a.report(cmd, err)
	}
	inv := &invocation{app: a, cmd: cmd, conn: conn}
	if !cmd.noClient {
		if err := inv.resolve(); err != nil {
			return a.report(cmd, err)
		}
		defer inv.close()
	}
	callCtx := ctx
	if !cmd.stream && !cmd.noClient {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, inv.settings.timeout)
		defer cancel()
	}
	if err := run(callCtx, inv, pos); err != nil {
		return a.report(cmd, err)
	}
	return exitOK
}

// report prints a command's error as one line, "meshctl: <command>: <error>", and returns
// the exit code: 2 and a usage hint for a command line error, 1 for anything else. A gRPC
// status is shown as "<Code>: <message>".
func (a *app) report(cmd *command, err error) int {
	if errors.Is(err, errUsage) {
		fmt.Fprintf(a.stderr, "meshctl: %s: %s\n", cmd.path, oneLine(strings.TrimPrefix(err.Error(), errUsage.Error()+": ")))
		fmt.Fprintf(a.stderr, "usage: meshctl %s [flags] (run \"meshctl %s -h\" for the flags)\n", strings.TrimSpace(cmd.path+" "+cmd.args), cmd.path)
		return exitUsage
	}
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Code().String() + ": " + s.Message()
	}
	fmt.Fprintf(a.stderr, "meshctl: %s: %s\n", cmd.path, oneLine(msg))
	return exitError
}

// oneLine joins a multi-line message into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func orNone(args string) string {
	if args == "" {
		return "no arguments"
	}
	return args
}

// lookup finds the command selected by the leading words of args and how many words it took;
// when no command matches, it returns nil and how many words matched a command group.
func (a *app) lookup(args []string) (*command, int) {
	var best *command
	n := 0
	for _, c := range a.commands {
		words := strings.Fields(c.path)
		if len(words) <= len(args) && equalWords(words, args[:len(words)]) && len(words) > n {
			best, n = c, len(words)
		}
	}
	if best != nil {
		return best, n
	}
	for n < len(args) && len(a.under(args[:n+1])) > 0 {
		n++
	}
	return nil, n
}

// under lists the commands whose path starts with prefix.
func (a *app) under(prefix []string) []*command {
	var out []*command
	for _, c := range a.commands {
		words := strings.Fields(c.path)
		if len(words) > len(prefix) && equalWords(words[:len(prefix)], prefix) {
			out = append(out, c)
		}
	}
	return out
}

func equalWords(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// parseInterleaved parses flags that may come before, between or after the positional
// arguments ("meshctl domain add sports --admin x"); "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// flag.Parse consumed a "--" if the argument before rest was one.
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printCommands lists the commands under prefix (all when empty).
func (a *app) printCommands(w io.Writer, prefix []string) {
	fmt.Fprintln(w, "meshctl administers a meshca cluster over its admin API (mutual TLS).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: meshctl [connection flags] <command> [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	cmds := a.commands
	if len(prefix) > 0 {
		cmds = a.under(prefix)
	}
	sorted := append([]*command(nil), cmds...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].path < sorted[j].path })
	width := 0
	for _, c := range sorted {
		width = max(width, len(c.path)+1+len(c.args))
	}
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-*s  %s\n", width, strings.TrimSpace(c.path+" "+c.args), c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "connection flags (also per command; else the environment, else the config file):")
	fmt.Fprintln(w, "  --addr HOST:PORT   admin API address        (MESHCA_ADMIN_ADDR, addr)")
	fmt.Fprintln(w, "  --cert FILE        client certificate (PEM) (MESHCA_ADMIN_CERT, cert)")
	fmt.Fprintln(w, "  --key FILE         client key (PEM)         (MESHCA_ADMIN_KEY, key)")
	fmt.Fprintln(w, "  --ca-bundle FILE   trusted CA roots (PEM)   (MESHCA_CA_BUNDLE, ca_bundle)")
	fmt.Fprintln(w, "  --config FILE      YAML config file         (MESHCA_CONFIG; default "+defaultConfigHint+")")
	fmt.Fprintln(w, "  --output table|json                          (MESHCA_OUTPUT, output)")
	fmt.Fprintln(w, "  --timeout DURATION per-call deadline (30s)   (MESHCA_TIMEOUT, timeout)")
}

// printUsage shows one command's usage and flags.
func (a *app) printUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: meshctl %s %s [flags]\n\n%s.\n\nflags:\n", cmd.path, cmd.args, upperFirst(cmd.summary))
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// invocation is a command being run: its connection settings and, once dialed, its client.
type invocation struct {
	app      *app
	cmd      *command
	conn     connFlags
	settings settings
	dialed   *dialedClient
}

// admin returns the admin API client, dialing it on first use.
func (inv *invocation) admin() (meshcav1.AdminClient, error) {
	if inv.dialed == nil {
		d, err := dial(inv.settings)
		if err != nil {
			return nil, err
		}
		inv.dialed = d
	}
	return inv.dialed.client, nil
}

// close closes the connection, if one was dialed.
func (inv *invocation) close() {
	if inv.dialed != nil {
		inv.dialed.conn.Close()
	}
}

// resolve fills the connection settings from the flags, the environment and the config file.
func (inv *invocation) resolve() error {
	s, err := resolveSettings(inv.conn, inv.app.getenv, os.ReadFile, inv.app.configDir)
	if err != nil {
		return err
	}
	inv.settings = s
	return nil
}

// defaultTimeout bounds each call unless --timeout says otherwise.
const defaultTimeout = 30 * time.Second
