package localapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
)

// Issue 16 item 5: the routes accept every name config accepts (the
// longest included), and nothing longer; one rule, config.ValidName.
func TestRoutesServeEveryNameConfigAccepts(t *testing.T) {
	longest := strings.Repeat("n", config.MaxNameLen)
	h := start(t, newFake(snapshot(longest, "key-longest", t0.Add(time.Hour), 1)), setup{})
	if r := h.get("/v1/sessions/" + longest + "/key"); r.status != http.StatusOK || r.body != "key-longest\n" {
		t.Fatalf("a %d-character name: %d %q", config.MaxNameLen, r.status, r.body)
	}
	if r := h.get("/v1/sessions/" + longest + "n/key"); r.status != http.StatusNotFound {
		t.Fatalf("a %d-character name: %d, want 404", config.MaxNameLen+1, r.status)
	}
}
