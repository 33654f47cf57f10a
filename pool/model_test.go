package pool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// model drives a real pool (over the fake Erply, on a fake clock) with
// random operations from concurrent goroutines and checks the pool's
// invariants after every step. POOL_MODEL_SEED replays a run.
type model struct {
	t    *testing.T
	clk  *clock.Fake
	fake *erplytest.Server
	acct *erplytest.Account
	up   *upstream.Client
	pool *pool.Pool
	dir  string
	code string
	pin  string

	// clockMu: operations that check expiry hold it shared so the clock
	// cannot move between a Get and its check; Advance holds it alone.
	clockMu sync.RWMutex

	reloadMu  sync.Mutex // one reload at a time, as the daemon does
	creds     []config.Credential
	nextID    int
	removed   sync.Map // name -> true once a reload has dropped it (names are never reused)
	everySeen sync.Map // name -> true for every name ever configured

	inflight sync.Map // name -> *atomic.Int32: logins running in its Method
	logins   atomic.Int64
	served   atomic.Int64
	refused  atomic.Int64

	keysMu sync.Mutex
	keys   []string // keys seen served, for stale invalidations

	failMu sync.Mutex
	fails  []string
}

func (m *model) violate(format string, args ...any) {
	m.failMu.Lock()
	defer m.failMu.Unlock()
	if len(m.fails) < 20 {
		m.fails = append(m.fails, fmt.Sprintf(format, args...))
	}
}

// counting wraps a real login method and checks that no two logins of one
// credential ever run at once.
type counting struct {
	inner pool.Method
	m     *model
}

func (c counting) Login(ctx context.Context, cred config.Credential, s pool.Sessions) (pool.Grant, error) {
	v, _ := c.m.inflight.LoadOrStore(cred.Name, new(atomic.Int32))
	n := v.(*atomic.Int32)
	if got := n.Add(1); got > 1 {
		c.m.violate("%d logins in flight at once for %s", got, cred.Name)
	}
	defer n.Add(-1)
	c.m.logins.Add(1)
	return c.inner.Login(ctx, cred, s)
}

var lengths = []int{120, 600, 3600}

func (m *model) newPassword(r *rand.Rand) config.Credential {
	m.nextID++
	name := "p" + strconv.Itoa(m.nextID)
	user, pw := name+"@model.example", "pw-"+name
	m.acct.AddUser(erplytest.User{Username: user, Password: pw, UserID: m.nextID})
	file := filepath.Join(m.dir, name)
	if err := os.WriteFile(file, []byte(pw), 0o600); err != nil {
		m.t.Fatal(err)
	}
	m.everySeen.Store(name, true)
	return config.Credential{
		Name: name, Kind: config.KindPassword, ClientCode: m.code, APIURL: m.fake.APIURL(),
		Username: user, Password: config.Secret{File: file, Var: "SESSIOND_" + name + "_PASSWORD"},
		SessionLength: lengths[r.IntN(len(lengths))],
	}
}

func (m *model) newPIN(r *rand.Rand, parent string) config.Credential {
	m.nextID++
	name := "c" + strconv.Itoa(m.nextID)
	m.everySeen.Store(name, true)
	return config.Credential{
		Name: name, Kind: config.KindPIN, ClientCode: m.code, APIURL: m.fake.APIURL(),
		Parent: parent, PIN: config.Secret{Value: m.pin, Var: "SESSIOND_" + name + "_PIN"},
		SessionLength: lengths[r.IntN(len(lengths))],
	}
}

func TestPoolModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("POOL_MODEL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("POOL_MODEL_SEED: %v", err)
		}
		seed = v
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with POOL_MODEL_SEED=%d", seed)
		}
	})
	const workers, steps = 8, 250
	m := newModel(t, seed)
	var wg sync.WaitGroup
	for w := range workers {
		r := rand.New(rand.NewPCG(seed, uint64(w)+1))
		wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					m.violate("worker %d panicked: %v", w, v)
				}
			}()
			for range steps {
				m.step(r)
			}
		})
	}
	wg.Wait()
	m.clockMu.Lock()
	m.pool.WaitBackground()
	m.clockMu.Unlock()
	m.checkListing()
	t.Logf("seed %d: %d workers × %d steps, %d logins, %d keys served, %d answered unavailable, %d credentials ever configured",
		seed, workers, steps, m.logins.Load(), m.served.Load(), m.refused.Load(), m.nextID)
	for _, f := range m.fails {
		t.Error(f)
	}
	if m.served.Load() == 0 {
		t.Error("no key was ever served: the model exercised nothing")
	}
}

func newModel(t *testing.T, seed uint64) *model {
	clk := clock.NewFake(start)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, _, _, pin := fake.SeedDemo()
	m := &model{t: t, clk: clk, fake: fake, acct: fake.AddAccount(code), dir: t.TempDir(), code: code, pin: pin}
	m.up = upstream.New(upstream.Options{
		Logger:   zerolog.Nop(),
		RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond,
		RateLimitWait: time.Millisecond,
	})
	r := rand.New(rand.NewPCG(seed, 0))
	a, b := m.newPassword(r), m.newPassword(r)
	m.creds = []config.Credential{a, b, m.newPIN(r, a.Name)}
	policy := refresher.Default()
	var rmu sync.Mutex
	policy.Float64 = func() float64 { rmu.Lock(); defer rmu.Unlock(); return r.Float64() }
	methods := login.Methods(m.up)
	p, err := pool.New(pool.Options{
		Upstream:    m.up,
		MethodFor:   func(c config.Credential) pool.Method { return counting{methods(c), m} },
		Credentials: m.creds, Clock: clk, Policy: policy, Logger: zerolog.Nop(),
		WaitLimit: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.pool = p
	t.Cleanup(func() { p.Close(); m.up.CloseIdleConnections() })
	// The subscriber reads the whole listing on every change, as the
	// daemon's STATUS line does: a name without its entry panics here.
	cancel := p.Subscribe(func(s *pool.Snapshot) {
		defer func() {
			if v := recover(); v != nil {
				m.violate("subscriber reading the listing panicked: %v", v)
			}
		}()
		if s.State == pool.StateOK && (s.Session == nil || s.Session.SessionKey == "") {
			m.violate("%s published ok without a session", s.Name)
		}
		for i, x := range p.Snapshots() {
			if x == nil {
				m.violate("Snapshots()[%d] is nil", i)
			}
		}
	})
	t.Cleanup(cancel)
	if err := p.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

// pickName returns a configured name, or now and then one a reload removed.
func (m *model) pickName(r *rand.Rand) string {
	if r.IntN(8) == 0 {
		var gone []string
		m.removed.Range(func(k, _ any) bool { gone = append(gone, k.(string)); return true })
		if len(gone) > 0 {
			slices.Sort(gone)
			return gone[r.IntN(len(gone))]
		}
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	if len(m.creds) == 0 {
		return ""
	}
	return m.creds[r.IntN(len(m.creds))].Name
}

func (m *model) step(r *rand.Rand) {
	switch n := r.IntN(100); {
	case n < 35:
		m.read(r, m.pickName(r), "")
	case n < 50:
		name := m.pickName(r)
		key := ""
		if s, ok := m.pool.Snapshot(name); ok && s.Session != nil {
			key = s.Session.SessionKey
		}
		m.read(r, name, key)
	case n < 58:
		m.keysMu.Lock()
		key := "never-issued"
		if len(m.keys) > 0 {
			key = m.keys[r.IntN(len(m.keys))]
		}
		m.keysMu.Unlock()
		m.read(r, m.pickName(r), key)
	case n < 68:
		steps := []time.Duration{time.Second, 15 * time.Second, time.Minute, 5 * time.Minute, 20 * time.Minute, 41 * time.Minute}
		m.clockMu.Lock()
		m.clk.Advance(steps[r.IntN(len(steps))])
		m.clockMu.Unlock()
	case n < 78:
		m.reload(r)
	case n < 82:
		m.changeSecret(r)
	case n < 88:
		m.fault(r)
	case n < 90:
		m.installFromElsewhere(r)
	default:
		m.checkListing()
	}
}

// read is Get (key "") or Invalidate(key), with the serving invariants.
func (m *model) read(r *rand.Rand, name, key string) {
	if name == "" {
		return // every credential removed: nothing to read
	}
	m.clockMu.RLock()
	defer m.clockMu.RUnlock()
	_, wasRemoved := m.removed.Load(name)
	var s *pool.Snapshot
	var err error
	if key == "" {
		s, err = m.pool.Get(context.Background(), name)
	} else {
		s, err = m.pool.Invalidate(context.Background(), name, key)
	}
	if wasRemoved {
		if !errors.Is(err, pool.ErrUnknownCredential) {
			m.violate("removed credential %s answered %v, want unknown credential", name, err)
		}
		return
	}
	if err != nil {
		var ue *pool.UnavailableError
		if errors.As(err, &ue) {
			m.refused.Add(1)
			return
		}
		if errors.Is(err, pool.ErrUnknownCredential) {
			if _, ever := m.everySeen.Load(name); ever {
				// Removed by a reload that finished after this read began.
				if _, gone := m.removed.Load(name); gone {
					return
				}
				m.reloadMu.Lock()
				present := slices.ContainsFunc(m.creds, func(c config.Credential) bool { return c.Name == name })
				m.reloadMu.Unlock()
				if !present {
					return // being removed right now
				}
			}
		}
		m.violate("%s: unexpected error %v", name, err)
		return
	}
	now := m.clk.Now()
	margin := m.pool.MarginOf(s)
	if s.Session == nil || s.Session.SessionKey == "" {
		m.violate("%s served a snapshot without a key", name)
		return
	}
	if left := s.ExpiresAt.Sub(now); left < margin {
		m.violate("%s served a key with %v left at %s, margin %v", name, left, now.Format(time.TimeOnly), margin)
	}
	if !m.fake.SessionValid(s.Session.SessionKey) {
		m.violate("%s served a key the fake Erply says is not valid", name)
	}
	m.served.Add(1)
	if r.IntN(4) == 0 {
		m.keysMu.Lock()
		if len(m.keys) < 200 {
			m.keys = append(m.keys, s.Session.SessionKey)
		}
		m.keysMu.Unlock()
	}
}

// reload adds, removes and changes credentials (often several at once).
// Half the reloads run alone, with the clock held and background logins
// settled, so that they can check that an unchanged credential keeps its key.
func (m *model) reload(r *rand.Rand) {
	exclusive := r.IntN(2) == 0
	if exclusive {
		m.clockMu.Lock()
		defer m.clockMu.Unlock()
	} else {
		m.clockMu.RLock()
		defer m.clockMu.RUnlock()
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	next := slices.Clone(m.creds)
	changed := map[string]bool{}
	var removedNow []string
	for range 1 + r.IntN(3) {
		switch op := r.IntN(4); {
		case op == 0 && len(next) < 10: // add a password credential, sometimes with a pin on it
			c := m.newPassword(r)
			next = append(next, c)
			if r.IntN(2) == 0 {
				next = append(next, m.newPIN(r, c.Name))
			}
		case op == 1 && len(next) < 10: // add a pin on an existing password credential
			var parents []string
			for _, c := range next {
				if c.Kind == config.KindPassword {
					parents = append(parents, c.Name)
				}
			}
			if len(parents) > 0 {
				next = append(next, m.newPIN(r, parents[r.IntN(len(parents))]))
			}
		case op == 2 && len(next) > 1: // remove one (and the pins on it)
			victim := next[r.IntN(len(next))].Name
			next = slices.DeleteFunc(next, func(c config.Credential) bool {
				if c.Name == victim || c.Parent == victim {
					removedNow = append(removedNow, c.Name)
					return true
				}
				return false
			})
		case len(next) > 0: // change one's session length
			i := r.IntN(len(next))
			next[i].SessionLength = lengths[(slices.Index(lengths, next[i].SessionLength)+1)%len(lengths)]
			changed[next[i].Name] = true
		}
	}
	var before map[string]string
	if exclusive {
		m.pool.WaitBackground()
		before = m.validKeys()
	}
	m.pool.Update(next)
	m.creds = next
	for _, n := range removedNow {
		m.removed.Store(n, true)
		if _, ok := m.pool.Snapshot(n); ok {
			m.violate("removed credential %s still has a snapshot after Update", n)
		}
	}
	if !exclusive {
		return
	}
	m.pool.WaitBackground()
	after := m.validKeys()
	for _, c := range next {
		if changed[c.Name] || (c.Parent != "" && changed[c.Parent]) {
			continue
		}
		if c.Parent != "" && (before[c.Parent] == "" || after[c.Parent] != before[c.Parent]) {
			// Its parent had no valid session and got one (a new pin on it
			// asked): switching again on the parent's new session is right.
			continue
		}
		if k, ok := before[c.Name]; ok && after[c.Name] != k {
			m.violate("unchanged credential %s got a new key across a reload", c.Name)
		}
	}
}

// validKeys returns the key of every credential holding a valid session.
func (m *model) validKeys() map[string]string {
	now := m.clk.Now()
	out := map[string]string{}
	for _, s := range m.pool.Snapshots() {
		if s.Valid(now, m.pool.MarginOf(s)) {
			out[s.Name] = s.Session.SessionKey
		}
	}
	return out
}

// changeSecret writes a wrong or the right password to a credential's file
// and tells the pool, as SIGHUP does. It holds the clock shared, so that
// an exclusive reload (which checks that unchanged credentials keep their
// keys) does not see the login a changed secret starts.
func (m *model) changeSecret(r *rand.Rand) {
	m.clockMu.RLock()
	defer m.clockMu.RUnlock()
	m.reloadMu.Lock()
	var files []config.Credential
	for _, c := range m.creds {
		if c.Password.File != "" {
			files = append(files, c)
		}
	}
	m.reloadMu.Unlock()
	if len(files) == 0 {
		return
	}
	c := files[r.IntN(len(files))]
	pw := "pw-" + c.Name
	if r.IntN(3) == 0 {
		pw = "wrong-" + strconv.Itoa(r.IntN(1000))
	}
	f, err := os.CreateTemp(m.dir, "secret")
	if err == nil {
		_, err = f.WriteString(pw)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		m.violate("write secret: %v", err)
		return
	}
	if err := os.Rename(f.Name(), c.Password.File); err != nil {
		m.violate("rename secret: %v", err)
		return
	}
	m.pool.SecretsChanged()
}

// fault makes the next few Erply calls fail, or clears the faults.
func (m *model) fault(r *rand.Rand) {
	faults := []erplytest.Fault{
		{HTTPStatus: 503},
		{ErplyCode: 1000},
		{Drop: true},
		{HTTPStatus: 429, RetryAfter: time.Millisecond},
		{Request: "verifyUser", ErplyCode: 1002},
		{Request: "switchUser", HTTPStatus: 502},
		{Request: "getJwtToken", HTTPStatus: 500},
		{Latency: 5 * time.Millisecond},
	}
	if r.IntN(4) == 0 {
		m.fake.ClearFaults()
		return
	}
	f := faults[r.IntN(len(faults))]
	f.Count = 1 + r.IntN(3)
	if r.IntN(3) == 0 {
		f = erplytest.Fault{HTTPStatus: 503} // an outage, until a later step clears it
	}
	m.fake.Inject(f)
}

// installFromElsewhere logs a password credential in directly and hands
// the session to the pool's install step, as a restored or adopted
// session would come in.
func (m *model) installFromElsewhere(r *rand.Rand) {
	m.reloadMu.Lock()
	var pw []config.Credential
	for _, c := range m.creds {
		if c.Kind == config.KindPassword {
			pw = append(pw, c)
		}
	}
	m.reloadMu.Unlock()
	if len(pw) == 0 {
		return
	}
	c := pw[r.IntN(len(pw))]
	m.clockMu.RLock()
	defer m.clockMu.RUnlock()
	g, err := login.Password{Up: m.up}.Login(context.Background(), c, m.pool)
	if err != nil {
		return // a fault, a wrong password: nothing to install
	}
	s, err := m.pool.Install(c.Name, g, "model")
	if err != nil {
		if !errors.Is(err, pool.ErrUnknownCredential) {
			m.violate("install of a fresh session for %s: %v", c.Name, err)
		}
		return
	}
	if s.Session.SessionKey != g.Session.SessionKey && !s.Removed {
		m.violate("install returned another session than the one installed for %s", c.Name)
	}
}

// checkListing: names and snapshots agree, in order, none missing. It
// runs between reloads: a name a reload is removing right now is missing
// before the model has recorded it as removed.
func (m *model) checkListing() {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	names := m.pool.Names()
	snaps := m.pool.Snapshots()
	for i, s := range snaps {
		if s == nil {
			m.violate("Snapshots()[%d] is nil", i)
		}
	}
	for _, n := range names {
		if _, ok := m.pool.Snapshot(n); !ok {
			m.violate("listed name %s has no snapshot", n)
		}
	}
}
