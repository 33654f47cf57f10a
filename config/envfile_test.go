package config

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestParseEnvFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     map[string]string
	}{
		{"plain", "A=1\nB=two words\n", map[string]string{"A": "1", "B": "two words"}},
		{"no final newline", "A=1", map[string]string{"A": "1"}},
		{"whitespace around key and value", "  A =  1  \n\tB\t=\tx\t\n", map[string]string{"A": "1", "B": "x"}},
		{"comments and blank lines", "# one\n  ; two\n\n\nA=x\n#B=y\n", map[string]string{"A": "x"}},
		{"empty value", "A=\nB=\"\"\n", map[string]string{"A": "", "B": ""}},
		{"double quotes keep # and spaces", `A="  a # b  "`, map[string]string{"A": "  a # b  "}},
		{"single quotes are literal", `A='$HOME \n "x"'`, map[string]string{"A": `$HOME \n "x"`}},
		{"double-quote escapes", `A="q\"b\\s\$d\` + "`" + `x\n"`, map[string]string{"A": `q"b\s$d` + "`" + `x\n`}},
		{"hash after a value is part of it (as in systemd)", "A=value # not a comment\n", map[string]string{"A": "value # not a comment"}},
		{"quote inside an unquoted value is literal", "A=it's\n", map[string]string{"A": "it's"}},
		{"quoted parts concatenate", "A=\"x\"y 'z'\n", map[string]string{"A": "xy 'z'"}},
		{"newline inside quotes", "A=\"l1\nl2\"\nB='m1\nm2'\nC=3\n", map[string]string{"A": "l1\nl2", "B": "m1\nm2", "C": "3"}},
		{"backslash continues an unquoted value", "A=foo\\\nbar\nB=1\n", map[string]string{"A": "foobar", "B": "1"}},
		{"backslash continues a double-quoted value", "A=\"foo\\\nbar\"\n", map[string]string{"A": "foobar"}},
		{"escaped trailing space is kept", "A=a\\ \n", map[string]string{"A": "a "}},
		{"escaped char outside quotes", `A=a\$b\\c`, map[string]string{"A": `a$b\c`}},
		{"CRLF line ends", "A=1\r\nB=\"2\"\r\n", map[string]string{"A": "1", "B": "2"}},
		{"later assignment wins", "A=1\nA=2\n", map[string]string{"A": "2"}},
		{"equals in value", "A=b=c==\n", map[string]string{"A": "b=c=="}},
		{"utf-8 value", "A=päss✓\n", map[string]string{"A": "päss✓"}},
		{"empty file", "", map[string]string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseEnvFile(strings.NewReader(tc.in))
			if err != nil {
				t.Fatalf("ParseEnvFile: %v", err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t+/pasted"
	tests := []struct {
		name, in string
		want     []string
	}{
		{"line without equals", "A=1\n" + secret + "\n", []string{"line 2: expected KEY=VALUE"}},
		{"last line without equals", "A=1\n\n" + secret, []string{"line 3: expected KEY=VALUE"}},
		{"export prefix", "export A=1\n", []string{`line 1: "export" is not part of systemd's EnvironmentFile= syntax (systemd ignores such a line); remove it`}},
		{"invalid name", "A=1\n" + secret + "=x\n", []string{"line 2: invalid variable name (letters, digits and _, not starting with a digit)"}},
		{"name starting with a digit", "1A=x", []string{"line 1: invalid variable name (letters, digits and _, not starting with a digit)"}},
		{"empty name", "=x", []string{"line 1: invalid variable name (letters, digits and _, not starting with a digit)"}},
		{"unterminated double quote names its first line", "A=1\nB=\"" + secret + "\nC=3\n", []string{"line 2: unterminated double quote"}},
		{"unterminated single quote", "A='" + secret, []string{"line 1: unterminated single quote"}},
		{"NUL byte", "A=a\x00b\n", []string{"line 1: A: value contains a NUL byte"}},
		{"invalid UTF-8", "A=\xff\xfe\n", []string{"line 1: A: value is not valid UTF-8"}},
		{
			"every bad line reported",
			"ok=1\nbad\nexport X=1\nGOOD=2\n9=x\nZ=\"open",
			[]string{
				"line 2: expected KEY=VALUE",
				`line 3: "export" is not part of systemd's EnvironmentFile= syntax (systemd ignores such a line); remove it`,
				"line 5: invalid variable name (letters, digits and _, not starting with a digit)",
				"line 6: unterminated double quote",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseEnvFile(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("ParseEnvFile = %q, want an error", got)
			}
			if want := strings.Join(tc.want, "\n"); err.Error() != want {
				t.Errorf("error:\n%s\nwant:\n%s", err, want)
			}
			var se *SyntaxError
			if !errors.As(err, &se) || se.Line < 1 {
				t.Errorf("error %v does not unwrap to a *SyntaxError with a line", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error repeats the line's text: %v", err)
			}
		})
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseEnvFileReadError(t *testing.T) {
	t.Parallel()
	if _, err := ParseEnvFile(failingReader{}); err == nil || err.Error() != "disk on fire" {
		t.Errorf("err = %v, want the reader's error", err)
	}
}

// TestParseEnvFileRoundTrip writes arbitrary values the way an operator
// would quote them and reads them back unchanged.
func TestParseEnvFileRoundTrip(t *testing.T) {
	t.Parallel()
	values := []string{"", "plain", " lead and trail ", `q"uote`, `back\slash`, "$HOME", "`cmd`", "a # b", "it's", "multi\nline", "tab\there", "=", "ünïcode"}
	var sb strings.Builder
	want := make(map[string]string)
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "`", "\\`")
	for i, v := range values {
		// Double quotes with systemd's escapes, and single quotes (taken
		// literally) where the value has no single quote.
		k := "K" + string(rune('A'+i))
		want[k+"_D"] = v
		sb.WriteString(k + `_D="` + r.Replace(v) + "\"\n")
		if !strings.Contains(v, "'") {
			want[k+"_S"] = v
			sb.WriteString(k + "_S='" + v + "'\n")
		}
	}
	got, err := ParseEnvFile(strings.NewReader(sb.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
