package fleet

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func testKeys(ids ...string) []config.Key {
	var ks []config.Key
	for i, id := range ids {
		k := config.Key{ID: id}
		for j := range k.Secret {
			k.Secret[j] = byte(i*31 + j)
		}
		ks = append(ks, k)
	}
	return ks
}

// A record opens only with a key of the keyring and only for the identity
// and version it was sealed for; nonces are random.
func TestSealBindsIdentityAndVersion(t *testing.T) {
	keys := testKeys("k2", "k1")
	id := identity{fleet: "f", name: "pos", kind: "password", clientCode: "104729", user: "u"}
	v := version{Exp: 1700000000, Gen: 3}
	pt := []byte(`{"s":{"SessionKey":"secret-key"}}`)
	kid, ct, err := sealWith(keys, pt, id.ad("session", v))
	if err != nil || kid != "k2" {
		t.Fatalf("sealed with %q, %v; want the first key", kid, err)
	}
	if bytes.Contains(ct, []byte("secret-key")) {
		t.Fatal("the ciphertext holds the plaintext")
	}
	_, ct2, _ := sealWith(keys, pt, id.ad("session", v))
	if bytes.Equal(ct, ct2) {
		t.Fatal("two seals of the same record are equal: the nonce is not random")
	}
	if got, err := openWith(keys[1:], kid, ct, id.ad("session", v)); err == nil || got != nil {
		t.Fatal("opened without the key it was sealed with")
	}
	var oe *OpenError
	if _, err := openWith(testKeys("k1"), kid, ct, id.ad("session", v)); !errors.As(err, &oe) || !oe.Unknown {
		t.Fatalf("missing key: %v, want an unknown-key OpenError", err)
	}
	if got, err := openWith(append(testKeys("zz"), keys...), kid, ct, id.ad("session", v)); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("a keyring holding the key (not first) must open it: %v", err)
	}
	for name, other := range map[string][]byte{
		"fleet":       identity{"g", id.name, id.kind, id.clientCode, id.user}.ad("session", v),
		"name":        identity{id.fleet, "till", id.kind, id.clientCode, id.user}.ad("session", v),
		"kind":        identity{id.fleet, id.name, "oauth", id.clientCode, id.user}.ad("session", v),
		"client code": identity{id.fleet, id.name, id.kind, "1", id.user}.ad("session", v),
		"user":        identity{id.fleet, id.name, id.kind, id.clientCode, "v"}.ad("session", v),
		"record type": id.ad("hold", v),
		"expiry":      id.ad("session", version{Exp: v.Exp + 1, Gen: v.Gen}),
		"generation":  id.ad("session", version{Exp: v.Exp, Gen: v.Gen + 1}),
	} {
		if _, err := openWith(keys, kid, ct, other); !errors.As(err, &oe) || oe.Unknown {
			t.Errorf("a record opened for another %s (%v)", name, err)
		}
	}
}

// The breaker fails every command at once while open, and closes at the
// first success after the cool-down.
func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	var changes []bool
	b := &breaker{cooldown: time.Second, now: func() time.Time { return now }, changed: func(up bool, _ error) { changes = append(changes, up) }}
	if b.Allow() != nil {
		t.Fatal("a new breaker refuses")
	}
	b.ReportResult(redis.Nil)
	b.ReportResult(errors.New("NOSCRIPT No matching script"))
	b.ReportResult(context.Canceled)
	if open, _ := b.state(); open {
		t.Fatal("a missing key, an uncached script or a caller giving up opened the breaker")
	}
	b.ReportResult(errors.New("dial unix /x: connect: connection refused"))
	if err := b.Allow(); !errors.Is(err, ErrRedisUnreachable) {
		t.Fatalf("open breaker: Allow = %v", err)
	}
	now = now.Add(time.Second)
	if b.Allow() != nil {
		t.Fatal("after the cool-down commands must go through again")
	}
	b.ReportResult(errors.New("i/o timeout"))
	if b.Allow() == nil {
		t.Fatal("a failure after the cool-down must open it again")
	}
	now = now.Add(time.Second)
	b.ReportResult(nil)
	if open, _ := b.state(); open || b.Allow() != nil {
		t.Fatal("a success did not close it")
	}
	if fmt.Sprint(changes) != "[false true]" {
		t.Fatalf("changes reported: %v, want down then up once", changes)
	}
}

// newTestFleet is a fleet on miniredis with a fake clock, for the scripts.
func newTestFleet(t *testing.T) (*Fleet, *miniredis.Miniredis, *clock.Fake) {
	t.Helper()
	mr := miniredis.RunT(t)
	dir := t.TempDir()
	keyFile := dir + "/keys"
	if err := writeKeyring(keyFile, testKeys("k1")); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC))
	f, err := New(Options{
		Config: config.Fleet{RedisURL: config.Secret{Value: "redis://" + mr.Addr()}, Name: "t", KeyFile: keyFile, LockTTL: 2 * time.Second},
		Clock:  clk, Logger: zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, mr, clk
}

func writeKeyring(path string, keys []config.Key) error {
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s\n", k.ID, base64Std(k.Secret[:]))
	}
	return writeFile(path, b.Bytes())
}

// The publish script takes a record only from the lock holder and only if
// newer (expiry, then generation); it releases the lock, sets the key's TTL
// to the session's, ends a hold and tells the fleet. Release and extend
// touch only their holder's lock.
func TestScripts(t *testing.T) {
	f, mr, clk := newTestFleet(t)
	ctx := context.Background()
	id := identity{fleet: "t", name: "pos", kind: "password", clientCode: "1", user: "u"}
	k := keysFor("t", "pos")
	if k.session != "sessiond:{t/pos}:session" || k.lock != "sessiond:{t/pos}:lock" || k.hold != "sessiond:{t/pos}:hold" {
		t.Fatalf("keys = %+v: every key of a credential must share the hash tag {t/pos}", k)
	}
	ps := f.rdb.Subscribe(ctx, f.channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	grant := func(key string, life time.Duration) pool.Grant {
		now := clk.Now()
		return pool.Grant{Session: &upstream.Session{SessionKey: key, SessionLength: int64(life / time.Second)}, Obtained: now, ExpiresAt: now.Add(life)}
	}
	publish := func(token string, g pool.Grant, v version) (bool, error) { return f.publish(ctx, id, token, g, v) }

	if _, err := publish("nobody", grant("a", time.Hour), version{Exp: 100, Gen: 1}); !errors.Is(err, errNotHolder) {
		t.Fatalf("publish without the lock: %v", err)
	}
	lock := func(token string) {
		t.Helper()
		if ok, err := f.tryLock(ctx, k, token); !ok || err != nil {
			t.Fatalf("lock: %v %v", ok, err)
		}
	}
	lock("t1")
	if ok, _ := f.tryLock(ctx, k, "t2"); ok {
		t.Fatal("a second holder took the lock")
	}
	f.release(k, "t2", "pos")
	if !mr.Exists(k.lock) {
		t.Fatal("another token released the lock")
	}
	if ok, err := f.extend(ctx, k, "t2"); ok || err != nil {
		t.Fatal("another token extended the lock")
	}
	if ok, err := f.extend(ctx, k, "t1"); !ok || err != nil {
		t.Fatalf("the holder could not extend: %v", err)
	}
	mr.Set(k.hold, "x")
	if ok, err := publish("t1", grant("a", time.Hour), version{Exp: 100, Gen: 1}); !ok || err != nil {
		t.Fatalf("holder's publish: %v %v", ok, err)
	}
	if mr.Exists(k.lock) || mr.Exists(k.hold) {
		t.Fatal("the publish did not release the lock and end the hold")
	}
	if ttl := mr.TTL(k.session); ttl < 59*time.Minute || ttl > time.Hour {
		t.Fatalf("record TTL %s, want the session's hour", ttl)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil || msg.Payload != "pos" || msg.Channel != "sessiond:t:notify" {
		t.Fatalf("notice = %+v, %v", msg, err)
	}
	for _, tc := range []struct {
		v    version
		want bool
	}{
		{version{Exp: 99, Gen: 9}, false},  // expires earlier
		{version{Exp: 100, Gen: 1}, false}, // the same
		{version{Exp: 100, Gen: 2}, true},  // new JWTs
		{version{Exp: 101, Gen: 0}, true},  // a later session
	} {
		lock("t3")
		ok, err := publish("t3", grant(fmt.Sprint(tc.v), time.Hour), tc.v)
		if err != nil || ok != tc.want {
			t.Errorf("publish %+v: %v %v, want %v", tc.v, ok, err, tc.want)
		}
		if mr.Exists(k.lock) {
			t.Errorf("publish %+v left the lock", tc.v)
		}
	}
	rec, err := f.read(ctx, id)
	if err != nil || rec.v != (version{Exp: 101}) || rec.g.Session.SessionKey != fmt.Sprint(version{Exp: 101}) {
		t.Fatalf("stored %+v, %v", rec, err)
	}
	// A header changed in Redis no longer opens.
	mr.HSet(k.session, "gen", "7")
	var oe *OpenError
	if _, err := f.read(ctx, id); !errors.As(err, &oe) {
		t.Fatalf("tampered version: %v", err)
	}
	// The hold is fenced too.
	if err := f.writeHold(ctx, id, "t4", holdPayload{Until: clk.Now().Add(time.Minute).UnixMilli()}, time.Minute); !errors.Is(err, errNotHolder) {
		t.Fatalf("hold without the lock: %v", err)
	}
	lock("t4")
	if err := f.writeHold(ctx, id, "t4", holdPayload{Until: clk.Now().Add(time.Minute).UnixMilli(), Attempts: 2, Code: 1051}, time.Minute); err != nil {
		t.Fatal(err)
	}
	h, err := f.readHold(ctx, id)
	if err != nil || h.Attempts != 2 || h.Code != 1051 || mr.Exists(k.lock) {
		t.Fatalf("hold = %+v, %v", h, err)
	}
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }
