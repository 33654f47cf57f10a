package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/srv"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// maxListLen bounds endpoint list names in paths.
const maxListLen = 64

// validList reports whether list can be an endpoint list's field name
// (letters and digits, as customerRegistryURLs).
func validList(list string) bool {
	if list == "" || len(list) > maxListLen {
		return false
	}
	for i := 0; i < len(list); i++ {
		c := list[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// known returns the latest rendering of a credential the peer may read,
// without refreshing anything: 404 for a name that is not configured, 403
// for a peer not allowed.
func (s *Server) known(ci *connInfo, name string) (*rendered, error) {
	// config.ValidName is the rule every configured name passed, so
	// that nothing else reaches the pool.
	if !config.ValidName(name) {
		return nil, errUnknownCredential
	}
	rd := s.cache.lookup(name)
	if rd == nil {
		// The subscription keeps the cache complete; ask the pool anyway
		// rather than trust that for a 404.
		for _, snap := range s.sessions.Snapshots() {
			if snap != nil && snap.Name == name {
				rd = s.render(snap)
				break
			}
		}
		if rd == nil {
			return nil, errUnknownCredential
		}
	}
	if !s.mayRead(ci, rd.snap) {
		return nil, errForbidden(ci)
	}
	return rd, nil
}

// current returns the rendering of the request's credential whose key is
// valid beyond the margin now, and the time it was checked at. The
// pre-rendered snapshot serves while it is valid; otherwise the pool's Get
// refreshes (waiting up to LoginWait for a login) and its answer is served.
func (s *Server) current(r *http.Request) (*rendered, time.Time, error) {
	ci := peerOf(r.Context())
	name := r.PathValue("name")
	rd, err := s.known(ci, name)
	if err != nil {
		return nil, time.Time{}, err
	}
	if now := s.clk.Now(); rd.valid(now) {
		return rd, now, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), LoginWait)
	defer cancel()
	snap, err := s.sessions.Get(ctx, name)
	if err != nil {
		return nil, time.Time{}, err
	}
	return s.answer(ci, snap)
}

// answer checks and renders a snapshot the pool returned.
func (s *Server) answer(ci *connInfo, snap *pool.Snapshot) (*rendered, time.Time, error) {
	if snap == nil {
		return nil, time.Time{}, errors.New("the pool returned no snapshot")
	}
	if !s.mayRead(ci, snap) {
		return nil, time.Time{}, errForbidden(ci)
	}
	rd := s.cache.lookup(snap.Name)
	if rd == nil || rd.snap != snap {
		rd = s.render(snap)
	}
	if !rd.hasSession {
		return nil, time.Time{}, &pool.UnavailableError{Name: snap.Name, Reason: snap.LastError, RetryAfter: time.Second}
	}
	return rd, s.clk.Now(), nil
}

func (s *Server) handleSession(w http.ResponseWriter, r *http.Request) error {
	rd, now, err := s.current(r)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, applicationJSON, rd.sessionBody(now))
	return nil
}

func (s *Server) handleKey(w http.ResponseWriter, r *http.Request) error {
	rd, _, err := s.current(r)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, textPlain, rd.key)
	return nil
}

func (s *Server) handleJWT(w http.ResponseWriter, r *http.Request) error {
	rd, _, err := s.current(r)
	if err != nil {
		return err
	}
	if rd.token == nil {
		return errNoToken("Erply JWT")
	}
	writeBody(w, http.StatusOK, textPlain, rd.token)
	return nil
}

func (s *Server) handleIdentityToken(w http.ResponseWriter, r *http.Request) error {
	rd, _, err := s.current(r)
	if err != nil {
		return err
	}
	if rd.identityToken == nil {
		return errNoToken("identity token")
	}
	writeBody(w, http.StatusOK, textPlain, rd.identityToken)
	return nil
}

// parseForm reads the query and a form body; a body over MaxBodyBytes is 413.
func parseForm(r *http.Request) error {
	if err := r.ParseForm(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		// The parser's message may quote the body: keep it out.
		return answer.New(http.StatusBadRequest, "bad_request", "unreadable form body or query")
	}
	return nil
}

func (s *Server) handleInvalidate(w http.ResponseWriter, r *http.Request) error {
	ci := peerOf(r.Context())
	name := r.PathValue("name")
	if _, err := s.known(ci, name); err != nil {
		return err
	}
	if err := parseForm(r); err != nil {
		return err
	}
	key := r.Form.Get("key")
	if key == "" {
		return errMissingKey
	}
	ctx, cancel := context.WithTimeout(r.Context(), LoginWait)
	defer cancel()
	snap, err := s.sessions.Invalidate(ctx, name, key)
	if err != nil {
		return err
	}
	rd, now, err := s.answer(ci, snap)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, applicationJSON, rd.sessionBody(now))
	return nil
}

// listItem is one credential in GET /v1/sessions.
type listItem struct {
	Name       string  `json:"name"`
	Kind       string  `json:"kind"`
	ClientCode string  `json:"clientCode"`
	State      string  `json:"state"`
	ExpiresAt  *string `json:"expiresAt"` // null while there is no session
	// RefreshAt is when the next login is due (the refresh point, or the
	// retry after a failure); null before the first attempt.
	RefreshAt *string `json:"refreshAt"`
	// Logins counts successful logins since the daemon started.
	Logins    uint64 `json:"logins"`
	LastError string `json:"lastError"`
	// PasswordExpired is the last login reply's isPasswordExpired (false
	// while there is no session).
	PasswordExpired bool `json:"passwordExpired"`
	// Fleet is "off", "shared" or "local" (fleet mode is on but this
	// credential is not sharing now: FleetError says why); absent when
	// the daemon was built without a fleet status.
	Fleet      string `json:"fleet,omitempty"`
	FleetError string `json:"fleetError,omitempty"`
	// SinkError is why the credential's SINK_FILE does not hold its current
	// key (the write is retried); absent while it does.
	SinkError string `json:"sinkError,omitempty"`
}

// handleList lists the credentials the peer may read (on TCP, those
// without ALLOW_UIDS or ALLOW_GIDS).
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) error {
	ci := peerOf(r.Context())
	now := s.clk.Now()
	out := []listItem{}
	for _, snap := range s.sessions.Snapshots() {
		if snap == nil || !s.mayRead(ci, snap) {
			continue
		}
		it := listItem{
			Name:       snap.Name,
			Kind:       snap.Kind,
			ClientCode: snap.ClientCode,
			State:      string(stateAt(snap, now)),
			Logins:     snap.Logins,
			LastError:  errorText(snap.LastError),
		}
		if s.sinkError != nil {
			it.SinkError = errorText(s.sinkError(snap.Name))
		}
		if snap.Session != nil && !snap.ExpiresAt.IsZero() {
			at := snap.ExpiresAt.UTC().Format(time.RFC3339)
			it.ExpiresAt = &at
		}
		if !snap.RefreshAt.IsZero() {
			at := snap.RefreshAt.UTC().Format(time.RFC3339)
			it.RefreshAt = &at
		}
		if snap.Session != nil {
			it.PasswordExpired = snap.Session.PasswordExpired
		}
		if s.fleetStatus != nil {
			it.Fleet, it.FleetError = s.fleetStatus(snap.Name)
		}
		out = append(out, it)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// stateAt is the snapshot's state as of now: a session that has passed its
// expiry is "expired" even before the pool has noticed (a late timer).
func stateAt(snap *pool.Snapshot, now time.Time) pool.State {
	switch snap.State {
	case pool.StateOK, pool.StateRefreshing, pool.StateFailing:
		if !snap.Valid(now, 0) {
			return pool.StateExpired
		}
	}
	return snap.State
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) error {
	writeBody(w, http.StatusOK, textPlain, []byte("ok\n"))
	return nil
}

type readyCredential struct {
	State string `json:"state"`
	Error string `json:"error"`
}

type readyBody struct {
	Ready       bool                       `json:"ready"`
	Credentials map[string]readyCredential `json:"credentials"`
	LastReload  *ReloadStatus              `json:"lastReload,omitempty"`
}

// handleReadyz answers 200 when every credential holds a session valid
// beyond its margin, 503 otherwise.
func (s *Server) handleReadyz(w http.ResponseWriter, _ *http.Request) error {
	now := s.clk.Now()
	body := readyBody{Ready: true, Credentials: map[string]readyCredential{}}
	for _, snap := range s.sessions.Snapshots() {
		if snap == nil {
			continue
		}
		if !snap.Valid(now, s.sessions.MarginOf(snap)) {
			body.Ready = false
		}
		body.Credentials[snap.Name] = readyCredential{State: string(stateAt(snap, now)), Error: errorText(snap.LastError)}
	}
	if s.lastReload != nil {
		body.LastReload = s.lastReload()
	}
	status := http.StatusOK
	if !body.Ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, body)
	return nil
}

// handleRotate changes a password credential's password and answers the
// new session. It is served on the Unix socket only, to root and the
// daemon's own user: whoever rotates the password can lock every other
// user of the account out.
func (s *Server) handleRotate(w http.ResponseWriter, r *http.Request) error {
	ci := peerOf(r.Context())
	if ci.tcp {
		return errRotateTCP
	}
	if !ci.ok || (ci.uid != 0 && ci.uid != s.selfUID) {
		return errRotateForbidden(ci)
	}
	name := r.PathValue("name")
	if !config.ValidName(name) {
		return errUnknownCredential
	}
	snap, err := s.rotator.Rotate(r.Context(), name)
	if err != nil {
		return err
	}
	rd, now, err := s.answer(ci, snap)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, applicationJSON, rd.sessionBody(now))
	return nil
}

func (s *Server) handleProxy(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.known(peerOf(r.Context()), r.PathValue("name")); err != nil {
		return err
	}
	s.proxy.ServeHTTP(w, r)
	return nil
}

// marked is an endpoint with its down mark read once.
type marked struct {
	ep   upstream.Endpoint
	down bool
}

// endpointList returns the request's credential and the endpoint list it names.
func (s *Server) endpointList(r *http.Request) (*rendered, string, []upstream.Endpoint, error) {
	list := r.PathValue("list")
	rd, _, err := s.current(r)
	if err != nil {
		return nil, "", nil, err
	}
	if !validList(list) {
		return nil, "", nil, errUnknownList
	}
	eps, ok := rd.snap.Session.Endpoints[list]
	if !ok {
		return nil, "", nil, errUnknownList
	}
	return rd, list, eps, nil
}

func downKey(name, list string, e upstream.Endpoint) string {
	return name + "/" + list + "/" + e.Address()
}

// order returns the list in RFC 2782 order, endpoints marked down last.
func (s *Server) order(name, list string, eps []upstream.Endpoint) []marked {
	ms := make([]marked, len(eps))
	for i, e := range eps {
		ms[i] = marked{ep: e, down: s.downs.IsDown(downKey(name, list, e))}
	}
	return srv.Order(ms,
		func(m marked) (int, int) { return m.ep.Priority, m.ep.Weight },
		func(m marked) bool { return m.down },
		s.intn)
}

func (s *Server) handleEndpoints(w http.ResponseWriter, r *http.Request) error {
	rd, list, eps, err := s.endpointList(r)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, applicationJSON, endpointsJSON(s.order(rd.snap.Name, list, eps)))
	return nil
}

func (s *Server) handlePick(w http.ResponseWriter, r *http.Request) error {
	rd, list, eps, err := s.endpointList(r)
	if err != nil {
		return err
	}
	if len(eps) == 0 {
		return errNoEndpoints
	}
	first := s.order(rd.snap.Name, list, eps)[0]
	writeBody(w, http.StatusOK, textPlain, []byte(first.ep.Address()+"\n"))
	return nil
}

// handleDown marks the endpoints matching url= (a URL record) or target=
// ("host" for every port, or "host:port") down for the cool-down, and
// answers the list's new order.
func (s *Server) handleDown(w http.ResponseWriter, r *http.Request) error {
	rd, list, eps, err := s.endpointList(r)
	if err != nil {
		return err
	}
	if err := parseForm(r); err != nil {
		return err
	}
	url, target := r.Form.Get("url"), r.Form.Get("target")
	if url == "" && target == "" {
		return errMissingTarget
	}
	name := rd.snap.Name
	found := false
	for _, e := range eps {
		addr := e.Address()
		if (url != "" && (e.URL == url || addr == url)) ||
			(target != "" && e.Target != "" && (e.Target == target || addr == target)) {
			s.downs.MarkDown(downKey(name, list, e))
			found = true
		}
	}
	if !found {
		return errUnknownEndpoint
	}
	writeBody(w, http.StatusOK, applicationJSON, endpointsJSON(s.order(name, list, eps)))
	return nil
}

// endpointJSON is an endpoint record rebuilt from its fields, for the rare
// record whose raw bytes are missing or not a JSON object.
type endpointJSON struct {
	URL      string `json:"url,omitempty"`
	Token    string `json:"token,omitempty"`
	Target   string `json:"target,omitempty"`
	Port     int    `json:"port,omitempty"`
	Priority int    `json:"priority"`
	Weight   int    `json:"weight"`
}

// endpointsJSON renders the records as Erply sent them, each with "down" added.
func endpointsJSON(ms []marked) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		appendRecord(&b, m)
	}
	b.WriteString("]\n")
	return b.Bytes()
}

func appendRecord(b *bytes.Buffer, m marked) {
	var rec bytes.Buffer
	raw := m.ep.Raw
	if len(raw) == 0 || json.Compact(&rec, raw) != nil || rec.Len() < 2 || rec.Bytes()[0] != '{' {
		rec.Reset()
		fields, _ := json.Marshal(endpointJSON{URL: m.ep.URL, Token: m.ep.Token, Target: m.ep.Target,
			Port: m.ep.Port, Priority: m.ep.Priority, Weight: m.ep.Weight})
		rec.Write(fields)
	}
	obj := rec.Bytes()
	b.Write(obj[:len(obj)-1]) // without the closing brace
	if len(obj) > 2 {
		b.WriteByte(',')
	}
	if m.down {
		b.WriteString(`"down":true}`)
	} else {
		b.WriteString(`"down":false}`)
	}
}
