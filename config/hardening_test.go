package config

import (
	"errors"
	"strings"
	"testing"
)

// problemsOf loads env and returns its problems (nil when it loads).
func problemsOf(t *testing.T, env map[string]string) []string {
	t.Helper()
	_, err := Load(environ(env))
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load: %v, want a *ValidationError", err)
	}
	out := make([]string, len(ve.Problems))
	for i, p := range ve.Problems {
		out[i] = p.String()
	}
	return out
}

// Issue 16 item 5: a credential name longer than the routes accept was
// configured, logged in and counted as ready while every route answered
// 404. It is refused at configuration time, by the same rule the local
// API applies to paths (ValidName).
func TestCredentialNameLongerThanRoutesAcceptIsRefused(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen+1)
	env := minimalEnv()
	env["SESSIOND_CREDENTIALS"] = long
	env["SESSIOND_"+strings.ToUpper(long)+"_CLIENT_CODE"] = "123456"
	env["SESSIOND_"+strings.ToUpper(long)+"_USERNAME"] = "api-user"
	env["SESSIOND_"+strings.ToUpper(long)+"_PASSWORD"] = secretPassword
	probs := problemsOf(t, env)
	want := VarCredentials + `: "` + strings.Repeat("a", 40) + `…" is 65 characters long; a name has at most 64`
	if len(probs) != 1 || probs[0] != want {
		t.Fatalf("problems = %q, want [%q]", probs, want)
	}

	longest := strings.Repeat("b", MaxNameLen)
	env = minimalEnv()
	env["SESSIOND_CREDENTIALS"] = longest
	env["SESSIOND_"+strings.ToUpper(longest)+"_CLIENT_CODE"] = "123456"
	env["SESSIOND_"+strings.ToUpper(longest)+"_USERNAME"] = "api-user"
	env["SESSIOND_"+strings.ToUpper(longest)+"_PASSWORD"] = secretPassword
	if probs := problemsOf(t, env); probs != nil {
		t.Fatalf("a %d-character name: %q", MaxNameLen, probs)
	}
	if !ValidName(longest) || ValidName(long) || ValidName("") || ValidName("Pos") {
		t.Fatal("ValidName disagrees with the rule: 1 to 64 of a-z, 0-9, _")
	}
}

// Issue 16 item 12: SOCKET_MODE=0000 silently became 0660. A mode that
// lets no one connect (connecting needs write permission) is refused,
// never widened; a mode that does is honoured as given.
func TestSocketModeWithoutWriteIsRefusedNotWidened(t *testing.T) {
	for _, mode := range []string{"0000", "0", "0444", "0500"} {
		env := minimalEnv()
		env[VarSocketMode] = mode
		probs := problemsOf(t, env)
		if len(probs) != 1 || !strings.HasPrefix(probs[0], VarSocketMode+`: "`+mode+`" lets no one but root connect`) {
			t.Errorf("SOCKET_MODE=%s: problems %q, want it refused naming the variable", mode, probs)
		}
	}
	env := minimalEnv()
	env[VarSocketMode] = "0200"
	if c := mustLoad(t, environ(env)); c.SocketMode != 0o200 {
		t.Errorf("SOCKET_MODE=0200: %04o, want it as given", c.SocketMode)
	}
}

// Issue 16 item 12: an env file saved with a byte-order mark failed as
// "invalid variable name" without naming the mark.
func TestEnvFileWithByteOrderMarkNamesTheMark(t *testing.T) {
	path := writeFile(t, t.TempDir(), "env", "\ufeffSESSIOND_CREDENTIALS=pos\nSESSIOND_POS_CLIENT_CODE=123456\n")
	env := minimalEnv()
	env[VarEnvFile] = path
	probs := problemsOf(t, env)
	want := VarEnvFile + ": " + path + ": line 1: the file starts with a UTF-8 byte-order mark (U+FEFF, bytes EF BB BF); save it as UTF-8 without one"
	if len(probs) != 1 || probs[0] != want {
		t.Fatalf("problems = %q, want [%q]", probs, want)
	}
}

// The API URL in answers hides a password given in its user info.
func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://api:s3cret@{clientCode}.example/api/": "https://api:xxxxx@{clientCode}.example/api/",
		"https://api:s3cret@104001.example/api/":       "https://api:xxxxx@104001.example/api/",
		"https://104001.erply.com/api/":                "https://104001.erply.com/api/",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// Issue 16 item 4: check-config warns about a SINK_FILE whose directory
// does not exist (the daemon retries the write until it does).
func TestCheckConfigWarnsAboutMissingSinkDirectory(t *testing.T) {
	dir := t.TempDir()
	env := minimalEnv()
	env["SESSIOND_POS_SINK_FILE"] = dir + "/missing/pos.key"
	var out strings.Builder
	if err := CheckConfig(environ(env), &out); err != nil {
		t.Fatalf("CheckConfig: %v\n%s", err, out.String())
	}
	want := "warning: SESSIOND_POS_SINK_FILE: directory " + dir + "/missing does not exist: the key cannot be written until it does (the daemon retries)\n"
	if !strings.HasPrefix(out.String(), want) {
		t.Fatalf("check-config printed\n%s\nwant it to start with\n%s", out.String(), want)
	}
	env["SESSIOND_POS_SINK_FILE"] = dir + "/pos.key"
	out.Reset()
	if err := CheckConfig(environ(env), &out); err != nil || strings.Contains(out.String(), "warning") {
		t.Fatalf("an existing directory: %v\n%s", err, out.String())
	}
}
