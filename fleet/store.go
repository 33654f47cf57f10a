package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Redis layout of one credential; every key carries the hash tag
// {FLEET/NAME}, so the scripts touch one slot even on Redis Cluster:
//
//	sessiond:{FLEET/NAME}:session  hash exp, gen (clear: the version the script compares),
//	                               kid, ct (AES-256-GCM of the session); TTL = the session's
//	sessiond:{FLEET/NAME}:lock     string: the holder's random token; TTL = the lock TTL
//	sessiond:{FLEET/NAME}:hold     hash kid, ct (the encrypted failure hold)
//	sessiond:FLEET:notify          pub/sub channel; a message is a credential name
type keys struct {
	session, lock, hold string
}

func keysFor(fleetName, name string) keys {
	p := "sessiond:{" + fleetName + "/" + name + "}:"
	return keys{session: p + "session", lock: p + "lock", hold: p + "hold"}
}

func channelFor(fleetName string) string { return "sessiond:" + fleetName + ":notify" }

// version orders the sessions of a credential: Erply's expiry of the
// session first, then a generation number bumped by every publish of the
// same session (new JWTs). Both travel with the record, so the order
// survives Redis losing its data.
type version struct {
	Exp int64  // the session's expiry on Erply's clock, Unix seconds
	Gen uint64 // 0 for a session the fleet never published
}

func (v version) newer(o version) bool {
	return v.Exp > o.Exp || v.Exp == o.Exp && v.Gen > o.Gen
}

// expOf is a session's expiry on Erply's clock when the reply carried
// Erply's time, else on the local clock.
func expOf(s *upstream.Session, expiresAt time.Time) int64 {
	if s != nil && !s.ServerTime.IsZero() && s.SessionLength > 0 {
		return s.ServerTime.Unix() + s.SessionLength
	}
	return expiresAt.Unix()
}

// payload is a record's plaintext.
type payload struct {
	Session *upstream.Session `json:"s"`
	// Obtained and ExpiresAt are Unix milliseconds on the writer's clock:
	// daemons of a fleet are assumed to keep their clocks in step (NTP)
	// to well within the safety margin.
	Obtained  int64  `json:"o"`
	ExpiresAt int64  `json:"e"`
	ParentKey string `json:"p,omitempty"`
}

// record is a decoded shared session.
type record struct {
	v version
	g pool.Grant
}

// holdPayload is the plaintext of a failure hold: no daemon of the fleet
// logs in before Until; Attempts counts the failures in a row, fleet-wide,
// for the refused-login schedule; Refused lists fingerprints of the
// secrets that were refused (a daemon whose secret is not among them may
// try at once).
type holdPayload struct {
	Until      int64    `json:"u"` // Unix milliseconds
	Attempts   int      `json:"n"`
	Request    string   `json:"r"`
	Code       int      `json:"c"`
	HTTPStatus int      `json:"h"`
	Refused    []string `json:"f,omitempty"`
}

// The scripts. Redis runs each atomically.
var (
	// extendScript renews the lock only for its holder.
	extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	// releaseScript ends the holder's turn without a new session (the
	// login failed, or it adopted one): it deletes the lock only for its
	// holder and tells the fleet, so that waiters look again at once.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0`)
	// publishScript is the fenced write that ends the holder's turn:
	// accepted only from the lock holder (ARGV[1]), which it releases, and
	// only if newer than the stored record; it sets the key's TTL to the
	// session's, ends any failure hold, and tells the fleet.
	// 1 published, 0 not newer, -1 not the holder.
	publishScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
local cur = redis.call('HMGET', KEYS[1], 'exp', 'gen')
if cur[1] then
  local ce, cg = tonumber(cur[1]), tonumber(cur[2])
  local ne, ng = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ne < ce or (ne == ce and ng <= cg) then
    redis.call('PUBLISH', ARGV[7], ARGV[8])
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'exp', ARGV[2], 'gen', ARGV[3], 'kid', ARGV[4], 'ct', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1`)
	// holdScript writes the failure hold and ends the holder's turn, only
	// from the lock holder.
	holdScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'kid', ARGV[2], 'ct', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1`)
)

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// tryLock takes the credential's lock for token; false when another holds it.
func (f *Fleet) tryLock(ctx context.Context, k keys, token string) (bool, error) {
	return f.rdb.SetNX(ctx, k.lock, token, f.lockTTL).Result()
}

func (f *Fleet) extend(ctx context.Context, k keys, token string) (bool, error) {
	n, err := extendScript.Run(ctx, f.rdb, []string{k.lock}, token, f.lockTTL.Milliseconds()).Int()
	return n == 1, err
}

// release ends a turn that published nothing.
func (f *Fleet) release(k keys, token, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := releaseScript.Run(ctx, f.rdb, []string{k.lock}, token, f.channel, name).Err(); err != nil {
		f.log.Debug().Err(err).Msg("releasing the lock failed; it expires by itself")
	}
}

// turn is this daemon's hold of a credential's lock: renewed while the
// work runs, ended by a publish, a hold, or release.
type turn struct {
	f     *Fleet
	k     keys
	name  string
	token string
	stop  func() // ends the renewals; idempotent
	over  bool   // a script released the lock
}

func (f *Fleet) begin(k keys, name, token string) *turn {
	var once sync.Once
	stopKeep := f.keep(k, token)
	return &turn{f: f, k: k, name: name, token: token, stop: func() { once.Do(stopKeep) }}
}

// end stops the renewals and releases the lock unless a script did.
func (t *turn) end() {
	t.stop()
	if !t.over {
		t.f.release(t.k, t.token, t.name)
	}
}

// read returns the credential's shared record: nil when there is none, an
// *OpenError when this daemon cannot open it.
func (f *Fleet) read(ctx context.Context, id identity) (*record, error) {
	vals, err := f.rdb.HMGet(ctx, keysFor(id.fleet, id.name).session, "exp", "gen", "kid", "ct").Result()
	if err != nil {
		return nil, err
	}
	if vals[0] == nil || vals[1] == nil || vals[2] == nil || vals[3] == nil {
		return nil, nil
	}
	var v version
	es, _ := vals[0].(string)
	gs, _ := vals[1].(string)
	kid, _ := vals[2].(string)
	ct, _ := vals[3].(string)
	if v.Exp, err = strconv.ParseInt(es, 10, 64); err != nil {
		return nil, &OpenError{KeyID: kid}
	}
	if v.Gen, err = strconv.ParseUint(gs, 10, 64); err != nil {
		return nil, &OpenError{KeyID: kid}
	}
	pt, err := openWith(f.keyring(), kid, []byte(ct), id.ad("session", v))
	if err != nil {
		return nil, err
	}
	var p payload
	if err := json.Unmarshal(pt, &p); err != nil || p.Session == nil {
		return nil, fmt.Errorf("credential %s: %w", id.name, errUndecodable)
	}
	return &record{v: v, g: pool.Grant{
		Session: p.Session, Obtained: time.UnixMilli(p.Obtained), ExpiresAt: time.UnixMilli(p.ExpiresAt),
		ParentKey: p.ParentKey, Origin: originFleet,
	}}, nil
}

// publish writes g as the credential's record at version v, fenced by
// token. It reports whether Redis took it.
func (f *Fleet) publish(ctx context.Context, id identity, token string, g pool.Grant, v version) (bool, error) {
	ttl := g.ExpiresAt.Sub(f.clk.Now())
	if ttl < time.Millisecond {
		return false, nil
	}
	pt, err := json.Marshal(payload{Session: g.Session, Obtained: g.Obtained.UnixMilli(), ExpiresAt: g.ExpiresAt.UnixMilli(), ParentKey: g.ParentKey})
	if err != nil {
		return false, err
	}
	kid, ct, err := sealWith(f.keyring(), pt, id.ad("session", v))
	if err != nil {
		return false, err
	}
	k := keysFor(id.fleet, id.name)
	n, err := publishScript.Run(ctx, f.rdb, []string{k.session, k.lock, k.hold},
		token, v.Exp, v.Gen, kid, ct, ttl.Milliseconds(), f.channel, id.name).Int()
	if err != nil {
		return false, err
	}
	switch n {
	case 1:
		f.m.published.WithLabelValues(id.name).Inc()
		return true, nil
	case -1:
		return false, errNotHolder
	}
	return false, nil
}

var errNotHolder = errors.New("the lock was lost before the publish")

// readHold returns the credential's failure hold, nil when there is none.
func (f *Fleet) readHold(ctx context.Context, id identity) (*holdPayload, error) {
	vals, err := f.rdb.HMGet(ctx, keysFor(id.fleet, id.name).hold, "kid", "ct").Result()
	if err != nil {
		return nil, err
	}
	if vals[0] == nil || vals[1] == nil {
		return nil, nil
	}
	kid, _ := vals[0].(string)
	ct, _ := vals[1].(string)
	pt, err := openWith(f.keyring(), kid, []byte(ct), id.ad("hold", version{}))
	if err != nil {
		return nil, err
	}
	var h holdPayload
	if err := json.Unmarshal(pt, &h); err != nil {
		return nil, fmt.Errorf("credential %s: the hold: %w", id.name, errUndecodable)
	}
	return &h, nil
}

// writeHold stores h, fenced by token; the key outlives the hold by
// keep, so that the fleet-wide attempt count carries on to the next failure.
func (f *Fleet) writeHold(ctx context.Context, id identity, token string, h holdPayload, keep time.Duration) error {
	pt, err := json.Marshal(h)
	if err != nil {
		return err
	}
	kid, ct, err := sealWith(f.keyring(), pt, id.ad("hold", version{}))
	if err != nil {
		return err
	}
	ttl := time.UnixMilli(h.Until).Sub(f.clk.Now()) + keep
	if ttl < time.Second {
		ttl = time.Second
	}
	k := keysFor(id.fleet, id.name)
	n, err := holdScript.Run(ctx, f.rdb, []string{k.lock, k.hold}, token, kid, ct, ttl.Milliseconds(), f.channel, id.name).Int()
	if err == nil && n != 1 {
		err = errNotHolder
	}
	return err
}

// identityOfCred is identityOf with this fleet's name.
func (f *Fleet) identityOf(c config.Credential) identity { return identityOf(f.name, c) }
