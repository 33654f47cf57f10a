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
