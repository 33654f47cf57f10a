package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzLoad feeds arbitrary env-file bytes and SESSIOND_CREDENTIALS lists
// through the loader. Whatever the input, it must not panic, must return
// either a configuration or a *ValidationError of one-line problems each
// naming a SESSIOND_ variable, and must never print a secret it was given.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("SESSIOND_POS_CLIENT_CODE=1\nSESSIOND_POS_USERNAME=u\n"), "pos")
	f.Add([]byte("SESSIOND_CREDENTIALS=a,b\nSESSIOND_A_KIND=pin\nSESSIOND_A_PARENT=b\nSESSIOND_B_KIND=pin\nSESSIOND_B_PARENT=a\n"), "x")
	f.Add([]byte("# c\nSESSIOND_POS_KIND='identity'\nSESSIOND_POS_CLIENT_CODE=\"9\"\nSESSIOND_POS_TOKEN_FILE=/nonexistent\n"), "pos,pos")
	f.Add([]byte("SESSIOND_SOCKET_MODE=999\nSESSIOND_HTTP_ADDR=0.0.0.0:1\nSESSIOND_POS_SESSION_LENGTH=abc\nexport X=1\nA=\"open"), "pos,POS!")
	f.Add([]byte("SESSIOND_CC_KIND=pin\nSESSIOND_CC_PARENT=pos\nSESSIOND_POS_SINK_FILE=/k\nSESSIOND_CC_SINK_FILE=/k\nSESSIOND_POS_ALLOW_UIDS=1,2,x\n"), "pos,cc")
	f.Add([]byte("SESSIOND_API_URL=http://%zz\nSESSIOND_REFRESH_FRACTION=NaN\nSESSIOND_EXPIRY_MARGIN=-1s\r\nK=a\\\n b\n"), "")

	const (
		marker    = "MARKER-SECRET-7f3a"
		envPath   = "/fuzz/env"
		inlinePIN = "PIN-" + marker
	)
	f.Fuzz(func(t *testing.T, file []byte, creds string) {
		// Every listed name gets an inline password and PIN in the process
		// environment; messages must never show them.
		env := map[string]string{VarCredentials: creds, VarEnvFile: envPath}
		for _, n := range strings.Split(creds, ",") {
			p := varPrefix(strings.TrimSpace(n))
			env[p+sfxPassword] = "PW-" + marker
			env[p+sfxPIN] = inlinePIN
			env[p+sfxToken] = "TOK-" + marker
		}
		c, err := loadWithFile(env, envPath, file)
		leakCheck := !strings.Contains(string(file), marker) && !strings.Contains(creds, marker)

		// ParseEnvFile and Load agree on whether the file is well-formed.
		_, perr := ParseEnvFile(strings.NewReader(string(file)))

		var lines []string
		if err != nil {
			if c != nil {
				t.Fatalf("Load returned both a config and %v", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) == 0 {
				t.Fatalf("error %T %v is not a *ValidationError with problems", err, err)
			}
			for _, p := range ve.Problems {
				if !strings.HasPrefix(p.Var, Prefix) || p.Msg == "" {
					t.Fatalf("problem %q does not name a variable and a fault", p)
				}
				lines = append(lines, p.String())
			}
			lines = append(lines, ve.Warnings...)
			if perr != nil && ve.Problems[0].Var != VarEnvFile {
				t.Fatalf("ParseEnvFile failed (%v) but Load reported %q", perr, ve.Problems[0])
			}
		} else {
			if c == nil {
				t.Fatal("Load returned neither a config nor an error")
			}
			if perr != nil {
				t.Fatalf("Load accepted a file ParseEnvFile rejects: %v", perr)
			}
			if len(c.Credentials) == 0 {
				t.Fatal("a valid configuration has no credentials")
			}
			seen := make(map[string]bool)
			for _, cr := range c.Credentials {
				if seen[cr.Name] || !ValidName(cr.Name) {
					t.Fatalf("bad or duplicate name %q", cr.Name)
				}
				seen[cr.Name] = true
				if cr.ClientCode == "" || cr.APIURL == "" || cr.SessionLength < 1 || cr.SessionLength > 86400 {
					t.Fatalf("credential %+v escaped validation", cr)
				}
				if _, ok := kindSuffixes[cr.Kind]; !ok {
					t.Fatalf("credential %q has kind %q", cr.Name, cr.Kind)
				}
				if !cr.Equal(cr) {
					t.Fatalf("credential %q is not Equal to itself", cr.Name)
				}
				lines = append(lines, cr.Summary())
			}
			lines = append(lines, c.Warnings...)
		}
		for _, l := range lines {
			if strings.ContainsAny(l, "\n\r") {
				t.Fatalf("message spans lines: %q", l)
			}
			if leakCheck && strings.Contains(l, marker) {
				t.Fatalf("message shows a secret: %q", l)
			}
		}
	})
}
