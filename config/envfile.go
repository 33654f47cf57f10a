package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// SyntaxError is one malformed line of an env file. Its message names the
// line and the fault, never the line's text: the line may hold a secret.
type SyntaxError struct {
	Line int
	Msg  string
}

// Error formats the error as "line N: message".
func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ParseEnvFile reads systemd EnvironmentFile= syntax, so that the daemon and
// systemd agree on what a file means: KEY=VALUE assignments, blank lines and
// lines starting with # or ; ignored, whitespace around the key and before
// the value ignored, a value optionally in single quotes (taken literally)
// or double quotes (where \" \\ \` \$ are unescaped), a backslash escaping
// the next character outside quotes, and a backslash at the end of a line
// continuing the value on the next one. As in systemd, a # after a value is
// part of the value, and a later assignment of a key replaces an earlier one.
//
// Where systemd would silently skip or truncate an assignment, ParseEnvFile
// reports it instead: a line without "=", an invalid variable name, a leading
// "export ", an unterminated quote, a NUL byte, invalid UTF-8, a leading
// byte-order mark. The error is
// one *SyntaxError per bad line, joined with errors.Join.
func ParseEnvFile(r io.Reader) (map[string]string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	vars, errs := parseEnvFile(b)
	if len(errs) > 0 {
		joined := make([]error, len(errs))
		for i, e := range errs {
			joined[i] = e
		}
		return nil, errors.Join(joined...)
	}
	return vars, nil
}

// utf8BOM is the UTF-8 encoding of U+FEFF, which some editors put at the
// start of a text file.
const utf8BOM = "\xef\xbb\xbf"

// shellNeedEscape are the characters a backslash unescapes inside double quotes.
const shellNeedEscape = "\"\\`$"

type envState int

const (
	stPreKey envState = iota
	stKey
	stPreValue
	stValue
	stValueEscape
	stSingle
	stDouble
	stDoubleEscape
	stComment
)

// parseEnvFile is the state machine of systemd's parse_env_file_internal,
// with errors where systemd drops input.
func parseEnvFile(b []byte) (map[string]string, []*SyntaxError) {
	var errs []*SyntaxError
	if rest, ok := bytes.CutPrefix(b, []byte(utf8BOM)); ok {
		// An editor's byte-order mark would otherwise be read as part of
		// the first variable's name ("invalid variable name").
		errs = append(errs, &SyntaxError{Line: 1, Msg: "the file starts with a UTF-8 byte-order mark (U+FEFF, bytes EF BB BF); save it as UTF-8 without one"})
		b = rest
	}
	src := strings.ReplaceAll(string(b), "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")

	vars := make(map[string]string)
	var (
		state     = stPreKey
		line      = 1 // current line
		startLine = 1 // line where the current assignment began
		key       strings.Builder
		value     strings.Builder
		// valueWS is the length value had before its trailing run of
		// unescaped whitespace, or -1 when it does not end in whitespace.
		valueWS = -1
	)
	fail := func(msg string) { errs = append(errs, &SyntaxError{Line: startLine, Msg: msg}) }
	push := func() {
		k := strings.TrimRight(key.String(), " \t")
		v := value.String()
		if state == stValue && valueWS >= 0 {
			v = v[:valueWS]
		}
		key.Reset()
		value.Reset()
		valueWS = -1
		switch {
		case strings.HasPrefix(k, "export ") || strings.HasPrefix(k, "export\t"):
			fail(`"export" is not part of systemd's EnvironmentFile= syntax (systemd ignores such a line); remove it`)
		case !validVarName(k):
			fail("invalid variable name (letters, digits and _, not starting with a digit)")
		case strings.ContainsRune(v, 0):
			fail(k + ": value contains a NUL byte")
		case !utf8.ValidString(v):
			fail(k + ": value is not valid UTF-8")
		default:
			vars[k] = v
		}
	}

	for i := 0; i < len(src); i++ {
		c := src[i]
		switch state {
		case stPreKey:
			switch {
			case c == '#' || c == ';':
				state = stComment
			case c == '\n':
				line++
			case c == ' ' || c == '\t':
			case c == '=': // an empty name, reported as such
				state = stPreValue
				startLine = line
				valueWS = -1
			default:
				state = stKey
				startLine = line
				key.WriteByte(c)
			}
		case stKey:
			switch c {
			case '\n':
				fail("expected KEY=VALUE")
				key.Reset()
				state = stPreKey
				line++
			case '=':
				state = stPreValue
				valueWS = -1
			default:
				key.WriteByte(c)
			}
		case stPreValue:
			switch c {
			case '\n':
				push()
				state = stPreKey
				line++
			case '\'':
				state = stSingle
			case '"':
				state = stDouble
			case '\\':
				state = stValueEscape
			case ' ', '\t':
			default:
				state = stValue
				value.WriteByte(c)
			}
		case stValue:
			switch c {
			case '\n':
				push()
				state = stPreKey
				line++
			case '\\':
				state = stValueEscape
				valueWS = -1
			default:
				if c == ' ' || c == '\t' {
					if valueWS < 0 {
						valueWS = value.Len()
					}
				} else {
					valueWS = -1
				}
				value.WriteByte(c)
			}
		case stValueEscape:
			state = stValue
			if c == '\n' {
				line++ // an escaped newline joins the next line
			} else {
				value.WriteByte(c)
			}
		case stSingle:
			if c == '\'' {
				state = stPreValue
			} else {
				if c == '\n' {
					line++
				}
				value.WriteByte(c)
			}
		case stDouble:
			switch c {
			case '"':
				state = stPreValue
			case '\\':
				state = stDoubleEscape
			default:
				if c == '\n' {
					line++
				}
				value.WriteByte(c)
			}
		case stDoubleEscape:
			state = stDouble
			switch {
			case strings.IndexByte(shellNeedEscape, c) >= 0:
				value.WriteByte(c)
			case c == '\n':
				line++ // continuation: eaten
			default:
				value.WriteByte('\\')
				value.WriteByte(c)
			}
		case stComment:
			if c == '\n' {
				state = stPreKey
				line++
			}
		}
	}

	switch state {
	case stKey:
		fail("expected KEY=VALUE")
	case stSingle:
		fail("unterminated single quote")
	case stDouble, stDoubleEscape:
		fail("unterminated double quote")
	case stPreValue, stValue, stValueEscape:
		push()
	}
	return vars, errs
}

// validVarName reports whether s is a portable environment variable name.
func validVarName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
