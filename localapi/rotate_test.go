package localapi_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// fakeRotator publishes a new snapshot with key "ROTATED" as a rotation
// would, or fails with err; it counts its calls.
type fakeRotator struct {
	fake  *fakeSessions
	err   error
	calls atomic.Int32
}

var _ localapi.Rotator = (*fakeRotator)(nil)

func (r *fakeRotator) Rotate(_ context.Context, name string) (*pool.Snapshot, error) {
	r.calls.Add(1)
	if r.err != nil {
		return nil, r.err
	}
	s := snapshot(name, "ROTATED", t0.Add(time.Hour), 9)
	r.fake.publish(s)
	return s, nil
}

func TestRotateRoute(t *testing.T) {
	self := uint32(os.Getuid())
	other := self + 1000
	if other == 0 {
		other = 1000
	}
	type peer struct {
		uid uint32
		ok  bool
	}
	tests := []struct {
		name   string
		peer   peer
		path   string
		err    error
		status int
		body   string
	}{
		{"root", peer{0, true}, "/v1/sessions/pos/rotate-password", nil, 200, sessionJSON("ROTATED", t0.Add(time.Hour), 3600)},
		{"the daemon's user", peer{self, true}, "/v1/sessions/pos/rotate-password", nil, 200, sessionJSON("ROTATED", t0.Add(time.Hour), 3600)},
		{"another user", peer{other, true}, "/v1/sessions/pos/rotate-password", nil, 403,
			`{"error":"forbidden","message":"uid ` + itoa(other) + ` may not rotate passwords: only root and the daemon's user may"}` + "\n"},
		{"unknown peer", peer{0, false}, "/v1/sessions/pos/rotate-password", nil, 403,
			`{"error":"forbidden","message":"only root and the daemon's user may rotate passwords"}` + "\n"},
		{"bad name", peer{0, true}, "/v1/sessions/POS/rotate-password", nil, 404,
			`{"error":"unknown_credential","message":"unknown credential"}` + "\n"},
		{"refused by the rotator", peer{0, true}, "/v1/sessions/pos/rotate-password",
			answer.New(http.StatusConflict, "cannot_rotate", "the password of pos comes from the environment"), 409,
			`{"error":"cannot_rotate","message":"the password of pos comes from the environment"}` + "\n"},
		{"Erply refused", peer{0, true}, "/v1/sessions/pos/rotate-password",
			&answer.Error{Status: http.StatusBadGateway, Code: "erply_refused", Message: "no", ErplyCode: 1016}, 502,
			`{"error":"erply_refused","message":"no","erplyCode":1016}` + "\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1))
			rot := &fakeRotator{fake: fake, err: tc.err}
			h := start(t, fake, setup{opts: func(o *localapi.Options) {
				o.Rotator = rot
				o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return tc.peer.uid, tc.peer.uid, 1, tc.peer.ok }
			}})
			expect(t, h.do(http.MethodPost, tc.path, nil), tc.status, jsonType, tc.body)
			wantCalls := int32(0)
			if tc.status == 200 || tc.err != nil {
				wantCalls = 1
			}
			if n := rot.calls.Load(); n != wantCalls {
				t.Errorf("Rotate called %d times, want %d", n, wantCalls)
			}
			if tc.status == 200 {
				expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "ROTATED\n")
			}
		})
	}
}

func TestRotateRouteNotOnTCP(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		fake := newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1))
		rot := &fakeRotator{fake: fake}
		h := start(t, fake, setup{tcp: true, opts: func(o *localapi.Options) {
			o.Rotator = rot
			o.TCPSessions = enabled
		}})
		want := `{"error":"not_found","message":"rotate-password is served on the Unix socket only"}` + "\n"
		expect(t, h.doTCP(http.MethodPost, "/v1/sessions/pos/rotate-password"), 404, jsonType, want)
		expect(t, h.doTCP(http.MethodPost, "/v1/sessions/pos/rotate-password", localapi.RequestHeader, "1"), 404, jsonType, want)
		if n := rot.calls.Load(); n != 0 {
			t.Errorf("TCPSessions=%v: Rotate called %d times over TCP", enabled, n)
		}
	}
}

func TestRotateRouteAbsentWithoutRotator(t *testing.T) {
	h := start(t, newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1)), setup{})
	got := h.do(http.MethodPost, "/v1/sessions/pos/rotate-password", nil)
	expect(t, got, 404, jsonType, `{"error":"not_found","message":"no such route"}`+"\n")
}

// TestPasswordExpiredReported shows Erply's isPasswordExpired in the
// session JSON, the list and the gauge, and its return to false.
func TestPasswordExpiredReported(t *testing.T) {
	expired := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	expired.Session.PasswordExpired = true
	fine := snapshot("shop", "K2", t0.Add(time.Hour), 1)
	none := &pool.Snapshot{Name: "idle", State: pool.StateStarting}
	fake := newFake(expired, fine, none)
	h := start(t, fake, setup{})

	if got := h.get("/v1/sessions/pos"); got.status != 200 || !strings.HasSuffix(got.body, `"passwordExpired":true}`+"\n") {
		t.Errorf("session JSON = %d %s, want passwordExpired true", got.status, got.body)
	}
	list := h.get("/v1/sessions").body
	for _, want := range []string{
		`"name":"pos","kind":"password","clientCode":"104001","state":"ok","expiresAt":"2025-03-04T11:00:00Z","refreshAt":null,"logins":0,"lastError":"","passwordExpired":true}`,
		`"name":"shop","kind":"password","clientCode":"104001","state":"ok","expiresAt":"2025-03-04T11:00:00Z","refreshAt":null,"logins":0,"lastError":"","passwordExpired":false}`,
		`"name":"idle","kind":"","clientCode":"","state":"starting","expiresAt":null,"refreshAt":null,"logins":0,"lastError":"","passwordExpired":false}`,
	} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %s:\n%s", want, list)
		}
	}
	gauge := func(pos float64) string {
		return `
# HELP erply_sessiond_password_expired 1 when the last login reply of the credential said its password expired (isPasswordExpired), else 0 (absent while it has no session).
# TYPE erply_sessiond_password_expired gauge
erply_sessiond_password_expired{credential="pos"} ` + ftoa(pos) + `
erply_sessiond_password_expired{credential="shop"} 0
`
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(gauge(1)), "erply_sessiond_password_expired"); err != nil {
		t.Error(err)
	}

	rotated := snapshot("pos", "K3", t0.Add(time.Hour), 2)
	fake.publish(rotated)
	if got := h.get("/v1/sessions/pos"); !strings.HasSuffix(got.body, `"passwordExpired":false}`+"\n") {
		t.Errorf("after a new session: %s, want passwordExpired false", got.body)
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(gauge(0)), "erply_sessiond_password_expired"); err != nil {
		t.Error(err)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// With a fleet status, the listing says each credential's part in fleet
// mode and why one is local.
func TestFleetStatusListed(t *testing.T) {
	shared := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	local := snapshot("shop", "K2", t0.Add(time.Hour), 1)
	h := start(t, newFake(shared, local), setup{opts: func(o *localapi.Options) {
		o.FleetStatus = func(name string) (string, string) {
			if name == "shop" {
				return "local", "cannot decrypt the shared record"
			}
			return "shared", ""
		}
	}})
	list := h.get("/v1/sessions").body
	for _, want := range []string{`"name":"pos",`, `"fleet":"shared"}`, `"fleet":"local","fleetError":"cannot decrypt the shared record"}`} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %s:\n%s", want, list)
		}
	}
}
