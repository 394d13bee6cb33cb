package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonOptions write responses with the .proto field names, so scripts read the names the API
// documents.
var jsonOptions = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}

// streamJSONOptions write one event per line.
var streamJSONOptions = protojson.MarshalOptions{UseProtoNames: true}

// table collects rows and writes them aligned.
type table struct {
	rows [][]string
}

// row adds a row.
func (t *table) row(cols ...string) { t.rows = append(t.rows, cols) }

// write writes the rows in aligned columns.
func (t *table) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// print writes a response: as JSON, or as the table render draws.
func (inv *invocation) print(msg proto.Message, render func(*table)) error {
	w := inv.app.stdout
	if inv.settings.output == outputJSON {
		b, err := jsonOptions.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encoding the answer as JSON: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	t := &table{}
	render(t)
	return t.write(w)
}

// nanos formats a Unix-nanosecond time for a table; zero is "-".
func nanos(n int64) string {
	if n == 0 {
		return "-"
	}
	return time.Unix(0, n).UTC().Format(time.RFC3339)
}

// seconds formats a Unix-second time for a table; zero is "-".
func seconds(s int64) string {
	if s == 0 {
		return "-"
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}

// list formats a list for a table cell; empty is "-".
func list(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

// orDash is s, or "-" when empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// yesNo formats a flag for a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// enumName strips an enum value's type prefix: CSR_STATE_PENDING → pending.
func enumName(v fmt.Stringer, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(v.String(), prefix)), "_", "-")
}

// short abbreviates a long hex id for a table.
func short(id string) string {
	if len(id) > 16 {
		return id[:16] + "…"
	}
	return id
}
