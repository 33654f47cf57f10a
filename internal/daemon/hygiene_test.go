package daemon_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// hygiene collects every secret the daemon was given or handed out, and
// everything it said, to check that the one never shows in the other.
type hygiene struct {
	t       *testing.T
	d       *testDaemon
	secrets map[string]string // secret -> what it is
	said    []string          // "where: text" of every output collected
}

func (h *hygiene) secret(what, v string) {
	if v == "" {
		return
	}
	h.secrets[v] = what
	// A JWT's signature alone is as good as the token for a forger's
	// purposes of proof; it must not leak either.
	if parts := strings.Split(v, "."); len(parts) == 3 && len(parts[2]) >= 16 {
		h.secrets[parts[2]] = what + " (signature)"
	}
}

func (h *hygiene) record(where, text string) { h.said = append(h.said, where+": "+text) }

// session reads a credential's session through every route that serves a
// secret, records those secrets as issued, and checks the routes agree.
func (h *hygiene) session(name string) {
	h.t.Helper()
	// A pin credential may switch in the background right after its parent
	// changed, between the JSON read and the text reads: then read again.
	for attempt := 0; ; attempt++ {
		if h.sessionOnce(name) || attempt == 2 {
			return
		}
	}
}

// sessionOnce reads a credential's JSON and text routes, collects their
// secrets, and reports whether the text routes agreed with the JSON.
func (h *hygiene) sessionOnce(name string) bool {
	h.t.Helper()
	code, body := h.d.get("/v1/sessions/" + name)
	if code != http.StatusOK {
		h.t.Fatalf("%s: %d %s", name, code, body)
	}
	var s struct {
		SessionKey, Token, IdentityToken string
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		h.t.Fatal(err)
	}
	h.secret(name+" session key", s.SessionKey)
	h.secret(name+" JWT", s.Token)
	h.secret(name+" identity token", s.IdentityToken)
	kinds := map[string]string{"key": "session key", "jwt": "JWT", "identity-token": "identity token"}
	for route, want := range map[string]string{"key": s.SessionKey, "jwt": s.Token, "identity-token": s.IdentityToken} {
		code, body := h.d.get("/v1/sessions/" + name + "/" + route)
		if code == http.StatusOK {
			h.secret(name+" "+kinds[route], strings.TrimSuffix(body, "\n"))
		}
		if want != "" && (code != http.StatusOK || body != want+"\n") {
			return false
		}
		if code != http.StatusOK {
			h.record(name+"/"+route, body)
		}
	}
	return true
}

// failure sends a request expected to fail and records the error answer
// (headers and body) under label.
func (h *hygiene) failure(label, method, path, form string) {
	h.t.Helper()
	var code int
	var hdr http.Header
	var body string
	if method == http.MethodPost {
		code, hdr, body = h.d.post(path, form)
	} else {
		code, hdr, body = h.d.do(method, path, nil)
	}
	if code < 400 {
		h.t.Fatalf("%s: %d, want an error", label, code)
	}
	var hb strings.Builder
	_ = hdr.Write(&hb)
	h.record(label, hb.String()+body)
}

// TestSecretHygiene runs a full cycle at debug level — logins of every kind
// (password, PIN, identity token, OAuth), refreshes, invalidations, a login
// refused for a wrong password, an upstream outage past expiry and the
// recovery — and checks that no password, PIN, token file content, session
// key or JWT the fake issued appears in the logs, in any error answer, in
// the metrics, in the /v1/sessions listing or in /readyz.
func TestSecretHygiene(t *testing.T) {
	const (
		pin            = "83920571"
		clerkPassword  = "clerk-real-password-5521"
		clerkWrongPass = "clerk-wrong-password-7734"
	)
	var idToken, ssoToken string
	d := startDaemon(t, daemonOptions{
		env: map[string]string{
			"SESSIOND_LOG_LEVEL":          "debug",
			"SESSIOND_CREDENTIALS":        "pos,cashier,idt,sso,bad",
			"SESSIOND_CASHIER_PIN":        pin,
			"SESSIOND_IDT_KIND":           "identity",
			"SESSIOND_SSO_KIND":           "oauth",
			"SESSIOND_BAD_USERNAME":       "clerk@demo.example",
			"SESSIOND_BAD_PASSWORD":       clerkWrongPass,
			"SESSIOND_POS_SESSION_LENGTH": "3600",
		},
		setup: func(d *testDaemon) {
			acct := d.fake.AddAccount(d.code)
			acct.AddUser(erplytest.User{Username: "cashier@demo.example", PIN: pin, UserID: 7, EmployeeID: 8,
				EmployeeName: "Carl Cashier", GroupID: 3, GroupName: "Cashiers"})
			acct.AddUser(erplytest.User{Username: "clerk@demo.example", Password: clerkPassword, UserID: 9})
			// JWTs that expire before the sessions, so they are renewed too.
			d.fake.SetJWTLifetime(20 * time.Minute)
			idToken = d.fake.IssueIdentityToken(d.code, d.user, 24*time.Hour)
			ssoToken = d.fake.IssueOAuthToken(d.code, d.user, 24*time.Hour)
			for name, tok := range map[string]string{"idt": idToken, "sso": ssoToken} {
				f := filepath.Join(d.dir, name+".token")
				if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				up := strings.ToUpper(name)
				d.env["SESSIOND_"+up+"_CLIENT_CODE"] = d.code
				d.env["SESSIOND_"+up+"_TOKEN_FILE"] = f
			}
			d.env["SESSIOND_BAD_CLIENT_CODE"] = d.code
		},
	})
	h := &hygiene{t: t, d: d, secrets: map[string]string{}}
	h.secret("pos password", d.pw)
	h.secret("cashier PIN", pin)
	h.secret("clerk password", clerkPassword)
	h.secret("clerk wrong password", clerkWrongPass)
	h.secret("identity token file", idToken)
	h.secret("OAuth token file", ssoToken)
	good := []string{"pos", "cashier", "idt", "sso"}

	read := func() {
		for _, n := range good {
			h.session(n)
		}
	}
	read()
	// The refused login: its errors as callers see them.
	h.failure("refused: session", http.MethodGet, "/v1/sessions/bad", "")
	h.failure("refused: key", http.MethodGet, "/v1/sessions/bad/key", "")
	h.failure("refused: invalidate", http.MethodPost, "/v1/sessions/bad/invalidate", "key=whatever")

	// JWT renewals (20 min) and refreshes (40 min).
	for range 5 {
		d.clk.Advance(10 * time.Minute)
		read()
	}
	// Invalidations: of the current key, and of a stale one.
	for _, n := range []string{"pos", "cashier"} {
		key := d.key(n)
		code, _, body := d.post("/v1/sessions/"+n+"/invalidate", "key="+url.QueryEscape(key))
		if code != http.StatusOK {
			t.Fatalf("invalidate %s: %d %s", n, code, body)
		}
		h.record("invalidate "+n, "(answer checked for the new secrets below)")
		read()
	}
	// Callers' mistakes that name secrets: a key where none is wanted.
	h.failure("proxy call carrying a key", http.MethodPost, "/v1/sessions/pos/api", "request=getProducts&sessionKey="+url.QueryEscape(d.key("pos")))
	h.failure("a key as a credential name", http.MethodGet, "/v1/sessions/"+url.PathEscape(d.key("pos"))+"/key", "")
	h.failure("invalidate without a key", http.MethodPost, "/v1/sessions/pos/invalidate", "")

	// Erply fails for long enough that every session expires.
	d.fake.Inject(erplytest.Fault{HTTPStatus: http.StatusServiceUnavailable})
	for range 9 {
		d.clk.Advance(10 * time.Minute)
	}
	for _, n := range []string{"pos", "cashier", "sso"} {
		h.failure("outage: "+n, http.MethodGet, "/v1/sessions/"+n, "")
		h.failure("outage: "+n+"/key", http.MethodGet, "/v1/sessions/"+n+"/key", "")
		h.failure("outage: "+n+"/jwt", http.MethodGet, "/v1/sessions/"+n+"/jwt", "")
	}
	_, _, staleBody := d.post("/v1/sessions/pos/invalidate", "key=not-the-key")
	h.record("invalidate during the outage", staleBody)
	code, body := d.get("/readyz")
	h.record("/readyz during the outage", body)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during the outage: %d", code)
	}
	d.fake.ClearFaults()
	d.clk.Advance(6 * time.Minute)
	read()

	for _, p := range []string{"/v1/sessions", "/readyz", "/metrics", "/healthz"} {
		_, body := d.get(p)
		h.record(p, body)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	logs := d.logs.String()
	h.record("logs", logs)
	for _, want := range []string{`"level":"debug"`, `"message":"request"`, "login failed", "1051", "logged in"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the logs lack %q: the cycle did not run as planned\n%s", want, logs)
		}
	}

	kinds := map[string]int{}
	for _, what := range h.secrets {
		kinds[strings.SplitN(what, " ", 2)[1]]++
	}
	if kinds["session key"] < 8 || kinds["JWT"] < 8 || kinds["identity token"] < 4 {
		t.Fatalf("too few secrets collected for the check to mean anything: %v", kinds)
	}
	var leaks []string
	for _, out := range h.said {
		for s, what := range h.secrets {
			if strings.Contains(out, s) {
				where, _, _ := strings.Cut(out, ":")
				leaks = append(leaks, what+" in "+where)
			}
		}
	}
	sort.Strings(leaks)
	if len(leaks) > 0 {
		t.Fatalf("secrets leaked:\n%s", strings.Join(leaks, "\n"))
	}
	t.Logf("checked %d secrets (%v) against %d outputs, %d bytes of logs", len(h.secrets), kinds, len(h.said), len(logs))
}
