package erplytest

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestVerifyUserSessionLengthClamp(t *testing.T) {
	tests := []struct {
		name  string
		param []string // sessionLength param, if sent
		want  int64
	}{
		{"missing", nil, 3600},
		{"zero", []string{"sessionLength", "0"}, 3600},
		{"negative", []string{"sessionLength", "-5"}, 3600},
		{"not a number", []string{"sessionLength", "soon"}, 3600},
		{"one second", []string{"sessionLength", "1"}, 1},
		{"a day", []string{"sessionLength", "86400"}, 86400},
		{"over a day", []string{"sessionLength", "90000"}, 86400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rec := e.record(e.call("verifyUser", append([]string{"username", e.user, "password", e.pw}, tc.param...)...))
			if got, ok := rec["sessionLength"].(float64); !ok || int64(got) != tc.want {
				t.Fatalf("sessionLength = %#v, want the number %d", rec["sessionLength"], tc.want)
			}
			key := rec["sessionKey"].(string)
			created, expires := e.keyInfo(key)
			if created != start.Unix() || expires-created != tc.want {
				t.Fatalf("getSessionKeyInfo: created %d expires %d, want %d + %d", created, expires, start.Unix(), tc.want)
			}
			e.clk.Advance(time.Duration(tc.want-1) * time.Second)
			if !e.s.SessionValid(key) {
				t.Fatal("session invalid a second before its expiry")
			}
			e.keyInfo(key)
			e.clk.Advance(time.Second)
			if e.s.SessionValid(key) {
				t.Fatal("session still valid at its expiry")
			}
			e.wantError(e.call("getSessionKeyInfo", "sessionKey", key), 1054, "")
		})
	}
}

func TestLoginReplyShape(t *testing.T) {
	e := newEnv(t)
	r := e.call("verifyUser", "username", e.user, "password", e.pw)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(e.recordRaw(r), &raw); err != nil {
		t.Fatal(err)
	}
	// Loose typing as real Erply sends it: ids as strings, sessionLength as a number.
	for field, want := range map[string]string{
		"userID": `"6"`, "employeeID": `"5"`, "groupID": `"1"`, "sessionLength": `3600`,
		"userName": `"manager@demo.example"`, "groupName": `"Administrators"`, "couponRegistryURLs": `[]`,
	} {
		if got := string(raw[field]); got != want {
			t.Errorf("%s = %s, want %s", field, got, want)
		}
	}
	rec := e.record(r)
	key := rec["sessionKey"].(string)
	if !regexp.MustCompile(`^[0-9a-f]{32,}$`).MatchString(key) {
		t.Errorf("session key %q is not 32+ hex digits", key)
	}
	for _, f := range []string{"token", "identityToken"} {
		if tok, _ := rec[f].(string); strings.Count(tok, ".") != 2 {
			t.Errorf("%s is not a JWT", f)
		}
	}
	cr := rec["customerRegistryURLs"].([]any)
	if len(cr) != 3 || cr[0].(map[string]any)["url"] != "https://cr-a.example/" || cr[2].(map[string]any)["priority"] != float64(20) {
		t.Errorf("customerRegistryURLs = %v", cr)
	}
	cayan := rec["cayanGatewayURLs"].([]any)
	if c := cayan[1].(map[string]any); len(cayan) != 3 || c["target"] != "cayan2.example" || c["port"] != float64(8443) {
		t.Errorf("cayanGatewayURLs = %v", cayan)
	}
	if tr := rec["transactionRegistryURLs"].([]any); tr[1].(map[string]any)["weight"] != "5" {
		t.Errorf("transactionRegistryURLs = %v, want string-typed numbers", tr)
	}

	// getSessionKeyUser returns the same record for the same session.
	e.clk.Advance(90 * time.Second)
	same := e.record(e.call("getSessionKeyUser", "sessionKey", key))
	for _, f := range []string{"sessionKey", "userID", "userName", "sessionLength", "groupName"} {
		if same[f] != rec[f] {
			t.Errorf("getSessionKeyUser %s = %v, verifyUser said %v", f, same[f], rec[f])
		}
	}

	rec = e.record(e.call("verifyUser", "username", e.user, "password", e.pw, "doNotGenerateIdentityToken", "1"))
	if _, ok := rec["identityToken"]; ok {
		t.Error("identityToken sent despite doNotGenerateIdentityToken=1")
	}

	e.s.AddAccount(e.cc).SetEndpoints(map[string][]map[string]any{
		"customerRegistryURLs": {{"url": "https://only.example/", "token": "x", "priority": 1, "weight": 1}},
		"couponRegistryURLs":   nil,
	})
	raw = nil
	if err := json.Unmarshal(e.recordRaw(e.call("verifyUser", "username", e.user, "password", e.pw)), &raw); err != nil {
		t.Fatal(err)
	}
	if got := string(raw["customerRegistryURLs"]); got != `[{"priority":1,"token":"x","url":"https://only.example/","weight":1}]` {
		t.Errorf("overridden customerRegistryURLs = %s", got)
	}
	if got := string(raw["couponRegistryURLs"]); got != `[]` {
		t.Errorf("nil list sent as %s, want []", got)
	}
	if _, ok := raw["cayanGatewayURLs"]; ok {
		t.Error("cayanGatewayURLs still sent after SetEndpoints left it out")
	}
}

// recordRaw returns the first record of an ok reply as raw JSON.
func (e *env) recordRaw(r reply) json.RawMessage {
	e.t.Helper()
	e.record(r)
	var recs []json.RawMessage
	if err := json.Unmarshal(r.Records, &recs); err != nil {
		e.t.Fatal(err)
	}
	return recs[0]
}

func TestSwitchUser(t *testing.T) {
	tests := []struct {
		name string
		// prepare returns the parent key and PIN to switch with.
		prepare func(e *env, parent string) (key, pin string)
		want    int
	}{
		{"valid parent", func(e *env, p string) (string, string) { return p, e.pin }, 0},
		{"parent expired 1h ago", func(e *env, p string) (string, string) {
			e.clk.Advance(time.Hour + time.Hour)
			return p, e.pin
		}, 0},
		{"parent expired exactly 2h ago", func(e *env, p string) (string, string) {
			e.clk.Advance(time.Hour + 2*time.Hour)
			return p, e.pin
		}, 0},
		{"parent expired 3h ago", func(e *env, p string) (string, string) {
			e.clk.Advance(time.Hour + 3*time.Hour)
			return p, e.pin
		}, 1056},
		{"parent expired by ExpireSession", func(e *env, p string) (string, string) {
			e.s.ExpireSession(p)
			e.clk.Advance(2*time.Hour + time.Second)
			return p, e.pin
		}, 1056},
		{"parent deleted", func(e *env, p string) (string, string) {
			e.s.DeleteSession(p)
			return p, e.pin
		}, 1054},
		{"unknown parent", func(e *env, p string) (string, string) { return strings.Repeat("ab", 20), e.pin }, 1055},
		{"no parent", func(e *env, p string) (string, string) { return "", e.pin }, 1055},
		{"parent of another account", func(e *env, p string) (string, string) {
			e.s.AddAccount("555").AddUser(User{Username: "o", Password: "other-pw", UserID: 1})
			rec := e.record(e.callIn("555", "verifyUser", "username", "o", "password", "other-pw"))
			return rec["sessionKey"].(string), e.pin
		}, 1055},
		{"wrong PIN", func(e *env, p string) (string, string) { return p, "0000" }, 1051},
		{"no PIN", func(e *env, p string) (string, string) { return p, "" }, 1050},
		{"PIN of a blocked user", func(e *env, p string) (string, string) {
			e.s.AddAccount(e.cc).AddUser(User{Username: "both", Password: "both-pass", PIN: "2468", UserID: 9})
			for range 5 {
				e.wantError(e.call("verifyUser", "username", "both", "password", "wrong"), 1051, "")
			}
			return p, "2468"
		}, 1052},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			parent := e.login()
			key, pin := tc.prepare(e, parent)
			r := e.call("switchUser", "sessionKey", key, "cardCode", pin, "sessionLength", "100000")
			if tc.want != 0 {
				e.wantError(r, tc.want, "")
				return
			}
			rec := e.record(r)
			newKey := rec["sessionKey"].(string)
			if newKey == parent || rec["userName"] != "cashier@demo.example" || rec["userID"] != "7" ||
				rec["employeeName"] != "Carl Cashier" || rec["sessionLength"] != float64(86400) {
				t.Fatalf("switchUser record %v: want a new 86400 s session of the cashier", rec)
			}
			if !e.s.SessionValid(newKey) || e.s.Sessions(e.cc, "cashier@demo.example") != 1 {
				t.Fatal("the cashier's new session is not live")
			}
		})
	}
}

func TestChangePassword(t *testing.T) {
	t.Run("refusals", func(t *testing.T) {
		tests := []struct {
			name      string
			kv        []string
			wantCode  int
			wantField string
		}{
			{"old missing", []string{"newPassword", "long-enough-1"}, 1010, "oldPassword"},
			{"new missing", []string{"oldPassword", "demo-manager-pw"}, 1010, "newPassword"},
			{"new too short", []string{"oldPassword", "demo-manager-pw", "newPassword", "short7!"}, 1016, "newPassword"},
			{"new equals old", []string{"oldPassword", "demo-manager-pw", "newPassword", "demo-manager-pw"}, 1012, "newPassword"},
			{"old wrong", []string{"oldPassword", "not-my-password", "newPassword", "long-enough-1"}, 1016, "oldPassword"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				e := newEnv(t)
				key := e.login()
				e.wantError(e.call("changePassword", append([]string{"sessionKey", key}, tc.kv...)...), tc.wantCode, tc.wantField)
				if !e.s.SessionValid(key) {
					t.Fatal("a refused change deleted the session")
				}
				e.login() // the password is unchanged
			})
		}
	})
	t.Run("bad session", func(t *testing.T) {
		e := newEnv(t)
		e.wantError(e.call("changePassword", "sessionKey", "nope", "oldPassword", e.pw, "newPassword", "long-enough-1"), 1055, "")
	})
	t.Run("success deletes every other session", func(t *testing.T) {
		e := newEnv(t)
		k1, k2, k3 := e.login(), e.login(), e.login()
		other := e.record(e.call("switchUser", "sessionKey", k1, "cardCode", e.pin))["sessionKey"].(string)
		rec := e.record(e.call("changePassword", "sessionKey", k2, "oldPassword", e.pw, "newPassword", "brand-new-pw", "sessionLength", "600"))
		k4 := rec["sessionKey"].(string)
		if rec["userName"] != e.user || rec["sessionLength"] != float64(600) {
			t.Fatalf("changePassword record %v", rec)
		}
		for _, k := range []string{k1, k2, k3} {
			e.wantError(e.call("getSessionKeyInfo", "sessionKey", k), 1054, "")
		}
		e.keyInfo(k4)
		e.keyInfo(other) // another user's session is untouched
		if n := e.s.Sessions(e.cc, e.user); n != 1 {
			t.Fatalf("Sessions = %d, want 1", n)
		}
		e.wantError(e.call("verifyUser", "username", e.user, "password", e.pw), 1051, "")
		e.record(e.call("verifyUser", "username", e.user, "password", "brand-new-pw"))
	})
}

func TestLoginRefusals(t *testing.T) {
	e := newEnv(t)
	e.wantError(e.call("verifyUser", "password", e.pw), 1050, "")
	e.wantError(e.call("verifyUser", "username", e.user), 1050, "")
	e.wantError(e.callIn("999", "verifyUser", "username", e.user, "password", e.pw), 1053, "")
	e.wantError(e.call("verifyUser", "username", "cashier@demo.example", "password", "anything"), 1053, "")
	for range 10 {
		e.wantError(e.call("verifyUser", "username", "nobody@demo.example", "password", e.pw), 1051, "")
	}
	if e.s.Blocked(e.cc, "nobody@demo.example") {
		t.Fatal("an unknown user name is reported blocked")
	}
}

func TestLoginBlocking(t *testing.T) {
	e := newEnv(t)
	wrong := func() reply { return e.call("verifyUser", "username", e.user, "password", "wrong") }

	// Failures older than the window do not count.
	for range 4 {
		e.wantError(wrong(), 1051, "")
	}
	e.clk.Advance(15 * time.Minute)
	for range 4 {
		e.wantError(wrong(), 1051, "")
	}
	if e.s.Blocked(e.cc, e.user) {
		t.Fatal("blocked for failures spread over more than 15 minutes")
	}
	e.login()

	// A success resets the count of consecutive failures.
	for range 4 {
		e.wantError(wrong(), 1051, "")
	}
	e.login()
	for range 4 {
		e.wantError(wrong(), 1051, "")
	}
	if e.s.Blocked(e.cc, e.user) {
		t.Fatal("blocked after 4 consecutive failures")
	}
	e.wantError(wrong(), 1051, "")
	if !e.s.Blocked(e.cc, e.user) || e.s.TimesBlocked(e.cc, e.user) != 1 {
		t.Fatal("not blocked after 5 consecutive failures")
	}
	e.wantError(e.call("verifyUser", "username", e.user, "password", e.pw), 1052, "")
	e.wantError(wrong(), 1052, "")

	e.clk.Advance(30*time.Minute - time.Second)
	e.wantError(e.call("verifyUser", "username", e.user, "password", e.pw), 1052, "")
	e.clk.Advance(time.Second)
	if e.s.Blocked(e.cc, e.user) {
		t.Fatal("still blocked after 30 minutes")
	}
	e.login()

	// An administrator's password change lifts a block.
	for range 5 {
		wrong()
	}
	e.s.ChangePassword(e.cc, e.user, "set-by-admin")
	if e.s.Blocked(e.cc, e.user) {
		t.Fatal("still blocked after an admin password change")
	}
	e.record(e.call("verifyUser", "username", e.user, "password", "set-by-admin"))
}

func TestJWT(t *testing.T) {
	e := newEnv(t)
	rec := e.record(e.call("verifyUser", "username", e.user, "password", e.pw, "sessionLength", "86400"))
	key := rec["sessionKey"].(string)
	check := func(what, tok, iss string, lifetime time.Duration) {
		t.Helper()
		c := jwtClaims(t, tok)
		now := e.clk.Now().Unix()
		if c["exp"] != float64(now+int64(lifetime/time.Second)) || c["iat"] != float64(now) ||
			c["sub"] != e.user || c["clientCode"] != e.cc || c["iss"] != iss {
			t.Errorf("%s claims %v, want exp = iat + %v at %d", what, c, lifetime, now)
		}
		if _, ok := parseJWT(jwtKey, tok); !ok {
			t.Errorf("%s signature does not verify", what)
		}
	}
	check("login token", rec["token"].(string), issuerErply, time.Hour)
	check("login identityToken", rec["identityToken"].(string), issuerIdentity, time.Hour)

	e.clk.Advance(5 * time.Minute)
	obj := e.object(e.call("getJwtToken", "sessionKey", key))
	check("getJwtToken", obj["token"].(string), issuerErply, time.Hour)
	obj = e.object(e.call("getIdentityToken", "sessionKey", key))
	check("getIdentityToken", obj["identityToken"].(string), issuerIdentity, time.Hour)

	e.s.SetJWTLifetime(10 * time.Minute)
	obj = e.object(e.call("getJwtToken", "sessionKey", key))
	check("getJwtToken after SetJWTLifetime", obj["token"].(string), issuerErply, 10*time.Minute)

	e.s.ExpireSession(key)
	e.wantError(e.call("getJwtToken", "sessionKey", key), 1054, "")
}

func TestVerifyIdentityToken(t *testing.T) {
	e := newEnv(t)
	tok := e.s.IssueIdentityToken(e.cc, e.user, 30*time.Minute)
	exp := start.Add(30 * time.Minute).Unix()

	key := e.object(e.call("verifyIdentityToken", "jwt", tok))["sessionKey"].(string)
	if created, expires := e.keyInfo(key); created != start.Unix() || expires != exp {
		t.Fatalf("session %d..%d, want %d..%d (the token's lifetime)", created, expires, start.Unix(), exp)
	}
	e.clk.Advance(10 * time.Minute)
	if again := e.object(e.call("verifyIdentityToken", "jwt", tok))["sessionKey"]; again != key {
		t.Fatal("the same token gave a different session while the first was live")
	}
	if n := e.s.Sessions(e.cc, e.user); n != 1 {
		t.Fatalf("Sessions = %d, want 1", n)
	}

	e.s.DeleteSession(key)
	key2 := e.object(e.call("verifyIdentityToken", "jwt", tok))["sessionKey"].(string)
	if key2 == key {
		t.Fatal("a deleted session was handed out again")
	}
	if created, expires := e.keyInfo(key2); expires != exp || expires-created != 20*60 {
		t.Fatalf("new session %d..%d, want the token's remaining 20 min", created, expires)
	}

	// A JWT from getJwtToken is accepted too.
	login := e.login()
	jwt := e.object(e.call("getJwtToken", "sessionKey", login))["token"].(string)
	e.object(e.call("verifyIdentityToken", "jwt", jwt))

	e.clk.Advance(20 * time.Minute)
	e.wantError(e.call("verifyIdentityToken", "jwt", tok), 1191, "")

	fresh := e.s.IssueIdentityToken(e.cc, e.user, time.Hour)
	// Another user's claims under fresh's signature.
	fp, op := strings.Split(fresh, "."), strings.Split(e.s.IssueIdentityToken(e.cc, "cashier@demo.example", time.Hour), ".")
	tampered := fp[0] + "." + op[1] + "." + fp[2]
	for name, bad := range map[string]string{
		"garbage":       "not-a-jwt",
		"tampered":      tampered,
		"other account": e.s.IssueIdentityToken("555", e.user, time.Hour),
		"sso token":     e.s.IssueOAuthToken(e.cc, e.user, time.Hour),
	} {
		if r := e.call("verifyIdentityToken", "jwt", bad); r.Status.ErrorCode != 1191 {
			t.Errorf("%s token: code %d, want 1191", name, r.Status.ErrorCode)
		}
	}
	e.wantError(e.call("verifyIdentityToken", "jwt", e.s.IssueIdentityToken(e.cc, "ghost@demo.example", time.Hour)), 1173, "")
	e.wantError(e.call("verifyIdentityToken"), 1010, "jwt")
	e.object(e.call("verifyIdentityToken", "jwt", fresh))
}

func TestVerifyOAuthToken(t *testing.T) {
	e := newEnv(t)
	tok := e.s.IssueOAuthToken(e.cc, e.user, time.Hour)
	rec := e.record(e.call("verifyOAuthToken", "idToken", tok, "expiresIn", "7200"))
	if rec["sessionLength"] != float64(7200) || rec["userName"] != e.user || rec["userID"] != "6" {
		t.Fatalf("verifyOAuthToken record %v", rec)
	}
	if _, expires := e.keyInfo(rec["sessionKey"].(string)); expires != start.Unix()+7200 {
		t.Fatalf("expires %d, want expiresIn after login", expires)
	}
	rec2 := e.record(e.call("verifyOAuthToken", "idToken", tok))
	if rec2["sessionLength"] != float64(3600) || rec2["sessionKey"] == rec["sessionKey"] {
		t.Fatalf("second verifyOAuthToken %v: want a new default-length session", rec2)
	}

	e.wantError(e.call("verifyOAuthToken", "idToken", e.s.IssueIdentityToken(e.cc, e.user, time.Hour)), 1173, "")
	e.wantError(e.call("verifyOAuthToken", "idToken", e.s.IssueOAuthToken("555", e.user, time.Hour)), 1173, "")
	e.wantError(e.call("verifyOAuthToken", "idToken", e.s.IssueOAuthToken(e.cc, "ghost@demo.example", time.Hour)), 1173, "")
	e.wantError(e.call("verifyOAuthToken"), 1010, "idToken")
	e.clk.Advance(time.Hour)
	e.wantError(e.call("verifyOAuthToken", "idToken", tok), 1191, "")
}

func TestSessionHelpers(t *testing.T) {
	e := newEnv(t)
	k1, k2 := e.login(), e.login()
	if !e.s.SessionValid(k1) || e.s.Sessions(e.cc, e.user) != 2 {
		t.Fatal("fresh sessions are not live")
	}

	// Any other call is forwarded with a live key.
	r := e.call("getProducts", "sessionKey", k1, "pageNo", "2")
	if r.Status.ResponseStatus != "ok" || string(r.Records) != "[]" || r.Status.RecordsTotal != 0 {
		t.Fatalf("getProducts: %+v %s", r.Status, r.Records)
	}
	if f := e.s.LastForm("getProducts"); f.Get("pageNo") != "2" || f.Get("sessionKey") != k1 {
		t.Fatalf("LastForm = %v", f)
	}
	e.wantError(e.call("getProducts", "sessionKey", "0123456789abcdef0123456789abcdef"), 1055, "")
	e.wantError(e.call("getProducts"), 1055, "")
	e.wantError(e.callIn("999", "getProducts", "sessionKey", k1), 1055, "")

	e.s.ExpireSession(k1)
	if e.s.SessionValid(k1) || e.s.Sessions(e.cc, e.user) != 1 {
		t.Fatal("ExpireSession left the session live")
	}
	e.wantError(e.call("getProducts", "sessionKey", k1), 1054, "")

	e.s.DeleteSession(k2)
	e.wantError(e.call("getProducts", "sessionKey", k2), 1054, "")

	k3, k4 := e.login(), e.login()
	e.s.DeleteUserSessions(e.cc, e.user)
	if e.s.SessionValid(k3) || e.s.SessionValid(k4) || e.s.Sessions(e.cc, e.user) != 0 {
		t.Fatal("DeleteUserSessions left sessions live")
	}

	k5 := e.login()
	e.s.ChangePassword(e.cc, e.user, "changed-by-admin")
	e.wantError(e.call("getProducts", "sessionKey", k5), 1054, "")
	e.wantError(e.call("verifyUser", "username", e.user, "password", e.pw), 1051, "")
	e.record(e.call("verifyUser", "username", e.user, "password", "changed-by-admin"))

	for name, f := range map[string]func(){
		"ChangePassword":     func() { e.s.ChangePassword(e.cc, "ghost", "x") },
		"DeleteUserSessions": func() { e.s.DeleteUserSessions("999", e.user) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s of an unknown user did not panic", name)
				}
			}()
			f()
		}()
	}
}

func TestSeedDemo(t *testing.T) {
	e := newEnv(t)
	key := e.login()
	rec := e.record(e.call("switchUser", "sessionKey", key, "cardCode", e.pin))
	if rec["groupName"] != "Cashiers" {
		t.Fatalf("the PIN holder is %v, want the cashier", rec["userName"])
	}
	cc, user, pw, pin := e.s.SeedDemo()
	if cc != e.cc || user != e.user || pw != e.pw || pin != e.pin {
		t.Fatal("SeedDemo is not stable")
	}
	if !e.s.SessionValid(key) {
		t.Fatal("seeding again deleted a session")
	}
}

func TestConcurrentLogins(t *testing.T) {
	e := newEnv(t)
	const n = 20
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			f := form(e.cc, "verifyUser", "username", e.user, "password", e.pw, "sessionLength", strconv.Itoa(100+i))
			_, body, err := e.post(t.Context(), e.apiURL(e.cc), f)
			var r reply
			if err == nil {
				err = json.Unmarshal(body, &r)
			}
			var recs []map[string]any
			if err == nil {
				err = json.Unmarshal(r.Records, &recs)
			}
			if err != nil || len(recs) != 1 {
				t.Errorf("login %d: %v %s", i, err, body)
				return
			}
			keys[i], _ = recs[0]["sessionKey"].(string)
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, k := range keys {
		if k == "" || seen[k] {
			t.Fatalf("keys %v: want %d distinct keys", keys, n)
		}
		seen[k] = true
	}
	if got := e.s.Sessions(e.cc, e.user); got != n {
		t.Fatalf("Sessions = %d, want %d", got, n)
	}
	if got := e.s.Calls("verifyUser"); got != n {
		t.Fatalf("Calls = %d, want %d", got, n)
	}
}
