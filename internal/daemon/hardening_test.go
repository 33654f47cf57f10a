package daemon_test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// Issue 16 item 9: with sessions on TCP, a credential restricted by
// ALLOW_UIDS is served on the socket only, and the start-up log says
// which credentials TCP serves.
func TestTCPServesUnrestrictedCredentialsAndSaysWhich(t *testing.T) {
	d := startDaemon(t, daemonOptions{env: map[string]string{
		"SESSIOND_HTTP_ADDR": "127.0.0.1:0", "SESSIOND_HTTP_SESSIONS": "true",
		"SESSIOND_CASHIER_ALLOW_UIDS": "4242",
	}})
	line := d.logs.waitLine(t, 5*time.Second, "the TCP listener's credentials", func(l string) bool {
		return strings.Contains(l, "the TCP listener serves these credentials")
	})
	if !strings.Contains(line, `"credentials":["pos"]`) || !strings.Contains(line, `"socketOnly":["cashier"]`) {
		t.Fatalf("start-up line: %s", line)
	}
	addr := d.dm.HTTPAddr()
	if code, body := tcpDo(t, addr, "GET", "/v1/sessions/cashier/key", "X-Sessiond-Request", "1"); code != http.StatusForbidden {
		t.Fatalf("restricted credential on TCP: %d %q, want 403", code, body)
	}
	if code, body := tcpDo(t, addr, "GET", "/v1/sessions/pos/key", "X-Sessiond-Request", "1"); code != http.StatusOK {
		t.Fatalf("unrestricted credential on TCP: %d %q", code, body)
	}
}
