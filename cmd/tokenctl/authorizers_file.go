package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// The import and export file formats: a JSON array of
// {"authorizer_appid","refresh_token"} objects, or CSV with the header
// authorizer_appid,refresh_token. Other JSON fields and CSV columns are
// ignored (an SDK's dump may carry more).

const (
	formatJSON = "json"
	formatCSV  = "csv"
)

// Column names of the CSV header and the JSON fields.
const (
	colAppID   = "authorizer_appid"
	colRefresh = "refresh_token"
)

// badRow is a row of an import file that is not sent: its line and why.
type badRow struct {
	line   int
	appid  string
	reason string
}

// parsedFile is an import file: the rows to send (valid as far as
// tokenctl can tell; the refresher checks again) and the bad ones.
type parsedFile struct {
	rows []contract.AuthorizerRow
	bad  []badRow
}

// formatOf returns the format of a file named name: by its extension,
// else by its first non-blank byte ('[' is JSON), else CSV.
func formatOf(name string, data []byte) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return formatJSON
	case ".csv":
		return formatCSV
	}
	if t := bytes.TrimLeft(data, " \t\r\n\ufeff"); len(t) > 0 && t[0] == '[' {
		return formatJSON
	}
	return formatCSV
}

// parseImport parses an import file in format. A row that cannot be
// imported is a badRow with its line (never quoting its refresh token);
// a file that cannot be read as its format at all is an error (nothing
// is sent then). Duplicate appids: the first row counts, the others are
// bad.
func parseImport(format string, data []byte) (*parsedFile, error) {
	data = bytes.TrimPrefix(data, []byte("\ufeff")) // a BOM, as spreadsheets write
	var (
		pf  *parsedFile
		err error
	)
	if format == formatJSON {
		pf, err = parseJSONRows(data)
	} else {
		pf, err = parseCSVRows(data)
	}
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}
	rows := pf.rows[:0]
	for _, row := range pf.rows {
		if err := contract.CheckAuthorizerRow(row); err != nil {
			pf.bad = append(pf.bad, badRow{line: row.Line, appid: shownAppID(row.AuthorizerAppID), reason: err.Error()})
			continue
		}
		if first, dup := seen[row.AuthorizerAppID]; dup {
			pf.bad = append(pf.bad, badRow{line: row.Line, appid: row.AuthorizerAppID, reason: fmt.Sprintf("duplicate of line %d", first)})
			continue
		}
		seen[row.AuthorizerAppID] = row.Line
		rows = append(rows, row)
	}
	pf.rows = rows
	return pf, nil
}

// shownAppID is what a report shows of a row's appid: nothing unless it
// is valid (a file with its columns swapped has a refresh token there).
func shownAppID(s string) string {
	if contract.ValidAppName(s) {
		return s
	}
	return ""
}

// lineAt returns the 1-based line of byte offset off of data.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return 1 + bytes.Count(data[:off], []byte("\n"))
}

// parseJSONRows reads a JSON array of objects; each element's line is
// where it starts.
func parseJSONRows(data []byte) (*parsedFile, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	syntax := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("the file is not valid JSON: line %d: %s (nothing was imported)", lineAt(data, se.Offset), se.Error())
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return errors.New("the file is not valid JSON: it ends early (nothing was imported)")
		}
		return fmt.Errorf("the file is not valid JSON: %v (nothing was imported)", err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, errors.New(`the file is not a JSON array [{"authorizer_appid": …, "refresh_token": …}, …] (nothing was imported)`)
	}
	pf := &parsedFile{}
	for dec.More() {
		start := dec.InputOffset()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, syntax(err)
		}
		// The element starts at its first non-blank byte after start.
		rest := data[start:]
		skip := len(rest) - len(bytes.TrimLeft(rest, " \t\r\n,"))
		line := lineAt(data, start+int64(skip))
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil || obj == nil {
			pf.bad = append(pf.bad, badRow{line: line, reason: "not a JSON object"})
			continue
		}
		var row contract.AuthorizerRow
		row.Line = line
		bad := ""
		for _, f := range []struct {
			name string
			dst  *string
		}{{colAppID, &row.AuthorizerAppID}, {colRefresh, &row.RefreshToken}} {
			v, ok := obj[f.name]
			if !ok {
				continue // reported as empty by CheckAuthorizerRow
			}
			if json.Unmarshal(v, f.dst) != nil {
				bad = f.name + " is not a string"
				break
			}
		}
		if bad != "" {
			pf.bad = append(pf.bad, badRow{line: line, appid: shownAppID(row.AuthorizerAppID), reason: bad})
			continue
		}
		pf.rows = append(pf.rows, row)
	}
	if _, err := dec.Token(); err != nil {
		return nil, syntax(err)
	}
	return pf, nil
}

// parseCSVRows reads CSV with a header naming the columns
// authorizer_appid and refresh_token; each record's line is where it
// starts. A record CSV cannot parse (a stray quote) is a bad row.
func parseCSVRows(data []byte) (*parsedFile, error) {
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = false
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("the file is empty: want the CSV header authorizer_appid,refresh_token (nothing was imported)")
	}
	if err != nil {
		return nil, fmt.Errorf("the CSV header does not parse: %v (nothing was imported)", csvReason(err))
	}
	iApp, iRefresh := -1, -1
	for i, h := range header {
		switch strings.ToLower(strings.TrimSpace(h)) {
		case colAppID:
			iApp = i
		case colRefresh:
			iRefresh = i
		}
	}
	if iApp < 0 || iRefresh < 0 {
		return nil, errors.New("the first line is not the CSV header authorizer_appid,refresh_token (nothing was imported)")
	}
	pf := &parsedFile{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			pf.bad = append(pf.bad, badRow{line: pe.StartLine, reason: "CSV does not parse: " + csvReason(err)})
			continue
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		if len(rec) <= max(iApp, iRefresh) {
			pf.bad = append(pf.bad, badRow{line: line, reason: fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		pf.rows = append(pf.rows, contract.AuthorizerRow{Line: line,
			AuthorizerAppID: strings.TrimSpace(rec[iApp]), RefreshToken: strings.TrimSpace(rec[iRefresh])})
	}
	return pf, nil
}

// csvReason is a CSV error without its position prefix (the line is
// reported on its own) and never with the field's content.
func csvReason(err error) string {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// writeRows writes exported rows in format: with refresh tokens only if
// tokens (otherwise that column or field is absent).
type rowWriter struct {
	format string
	tokens bool
	w      io.Writer
	csv    *csv.Writer
	n      int
}

func newRowWriter(w io.Writer, format string, tokens bool) *rowWriter {
	rw := &rowWriter{format: format, tokens: tokens, w: w}
	if format == formatCSV {
		rw.csv = csv.NewWriter(w)
	}
	return rw
}

// begin writes the header (CSV) or the opening bracket (JSON).
func (rw *rowWriter) begin() error {
	if rw.csv != nil {
		h := []string{colAppID}
		if rw.tokens {
			h = append(h, colRefresh)
		}
		return rw.csv.Write(h)
	}
	_, err := io.WriteString(rw.w, "[")
	return err
}

// row writes one row.
func (rw *rowWriter) row(r contract.AuthorizerRow) error {
	if !rw.tokens {
		r.RefreshToken = ""
	}
	if rw.csv != nil {
		rec := []string{r.AuthorizerAppID}
		if rw.tokens {
			rec = append(rec, r.RefreshToken)
		}
		rw.n++
		return rw.csv.Write(rec)
	}
	b, err := json.Marshal(contract.AuthorizerRow{AuthorizerAppID: r.AuthorizerAppID, RefreshToken: r.RefreshToken})
	if err != nil {
		return err
	}
	sep := ",\n"
	if rw.n == 0 {
		sep = "\n"
	}
	rw.n++
	_, err = fmt.Fprintf(rw.w, "%s  %s", sep, b)
	return err
}

// end closes the JSON array, or flushes the CSV.
func (rw *rowWriter) end() error {
	if rw.csv != nil {
		rw.csv.Flush()
		return rw.csv.Error()
	}
	end := "\n]\n"
	if rw.n == 0 {
		end = "]\n"
	}
	_, err := io.WriteString(rw.w, end)
	return err
}

// createPrivate writes a file at path with mode 0600 through write: into
// a temporary file of the same directory (created 0600), then moved into
// place — refusing an existing path unless force. On any failure nothing
// is left behind.
func createPrivate(path string, force bool, write func(io.Writer) error) error {
	if _, err := os.Lstat(path); err == nil && !force {
		return fmt.Errorf("%s exists: refusing to overwrite it (--force replaces it)", path)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tokenctl-export-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if force {
		err = os.Rename(tmp, path)
	} else {
		// A hard link fails if path appeared meanwhile: never overwrite.
		err = os.Link(tmp, path)
		if err == nil {
			_ = os.Remove(tmp)
		}
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists: refusing to overwrite it (--force replaces it)", path)
	}
	if err != nil {
		return err
	}
	ok = true
	return nil
}
