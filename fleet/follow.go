package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// subscribe listens for the fleet's notices. go-redis reconnects and
// subscribes again by itself; each (re)subscription re-reads every record,
// because messages sent while the connection was down are lost.
func (f *Fleet) subscribe() {
	defer f.wg.Done()
	ps := f.rdb.Subscribe(f.ctx, f.channel)
	f.mu.Lock()
	if f.ctx.Err() != nil {
		f.mu.Unlock()
		_ = ps.Close()
		return
	}
	f.ps = ps
	f.mu.Unlock()
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		msg, err := ps.Receive(f.ctx)
		if f.ctx.Err() != nil {
			return
		}
		if err != nil {
			// Redis is gone: wait a little before go-redis dials again.
			if sleep(f.ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				f.syncAll("subscribed")
			}
		case *redis.Message:
			f.onNotice(m.Payload)
		}
	}
}

// poll re-reads every record at each PollInterval and when poked.
func (f *Fleet) poll() {
	defer f.wg.Done()
	t := time.NewTicker(f.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
			f.syncAll("poll")
		case why := <-f.kick:
			f.log.Debug().Str("why", why).Msg("re-reading the fleet's sessions")
			f.syncAll(why)
		}
	}
}

func (f *Fleet) onNotice(name string) {
	c := f.state(name)
	if c == nil {
		return
	}
	c.notify()
	f.sync(f.ctx, name)
}

func (f *Fleet) syncAll(string) {
	p := f.thePool()
	if p == nil {
		return
	}
	for _, n := range p.Names() {
		if f.ctx.Err() != nil {
			return
		}
		f.sync(f.ctx, n)
	}
}

// sync brings one credential in line with the fleet: it adopts a shared
// session newer than the one served, and publishes the served one when it
// is newer than the shared one (after an outage, or Redis lost its data):
// the freshest session wins without a login.
func (f *Fleet) sync(ctx context.Context, name string) {
	p := f.thePool()
	c := f.state(name)
	if p == nil || c == nil {
		return
	}
	conf, id, localErr := c.get()
	if conf.FleetLocal {
		return
	}
	rec, err := f.read(ctx, id)
	var oe *OpenError
	switch {
	case errors.As(err, &oe) || errors.Is(err, errUndecodable):
		if localErr == nil {
			f.goLocal(c, err)
		}
		return
	case err != nil:
		return
	case localErr != nil && rec == nil:
		return // still nothing this daemon may share
	case localErr != nil:
		c.clearLocal()
		f.log.Info().Str("credential", name).Msg("the fleet's shared session opens again: sharing")
	}
	snap, ok := p.Snapshot(name)
	if !ok {
		return
	}
	now := f.clk.Now()
	c.mu.Lock()
	if c.changing > 0 {
		// A password change of this daemon holds the lock: what the record
		// holds is about to die at Erply, and the change publishes its
		// session when it ends.
		c.mu.Unlock()
		return
	}
	served := c.servedVersion(snap)
	snapKey := ""
	if snap.Session != nil {
		snapKey = snap.Session.SessionKey
	}
	if rec != nil && f.fresh(rec.g, now) && !c.served.newer(rec.v) &&
		(rec.v.newer(served) || rec.v == served && rec.g.Session.SessionKey != snapKey) {
		f.installLocked(p, c, rec)
		c.mu.Unlock()
		return
	}
	mine := snap.Session != nil && snap.Valid(now, f.policy.MarginFor(time.Duration(snap.Session.SessionLength)*time.Second)) &&
		(rec == nil || served.newer(rec.v))
	parentKey := ""
	if c.servedKey == snapKey {
		parentKey = c.parentKey
	}
	c.mu.Unlock()
	if mine {
		f.publishMine(ctx, id, snap, served, parentKey)
	}
}

// install puts a record's session into the pool.
func (f *Fleet) install(c *credState, r *record) {
	if p := f.thePool(); p != nil {
		c.mu.Lock()
		f.installLocked(p, c, r)
		c.mu.Unlock()
	}
}

// installLocked installs under c.mu, so that a grant Login returns
// meanwhile is ordered after it.
func (f *Fleet) installLocked(p Pool, c *credState, r *record) {
	if _, err := p.Install(c.name, r.g, originFleet); err != nil {
		f.log.Debug().Str("credential", c.name).Err(err).Msg("could not install the fleet's session")
		return
	}
	c.setServed(r.g, r.v)
	f.m.adopted.WithLabelValues(c.name).Inc()
}

// publishMine publishes the served session when the shared one is older
// or gone; another daemon holding the lock wins (its session is newer).
func (f *Fleet) publishMine(ctx context.Context, id identity, snap *pool.Snapshot, v version, parentKey string) {
	k := keysFor(f.name, id.name)
	token := newToken()
	ok, err := f.tryLock(ctx, k, token)
	if err != nil || !ok {
		return
	}
	rec, err := f.read(ctx, id)
	if err != nil || rec != nil && !v.newer(rec.v) {
		f.release(k, token, id.name)
		return
	}
	g := pool.Grant{
		Session: snap.Session, ExpiresAt: snap.ExpiresAt, ParentKey: parentKey,
		Obtained: snap.ExpiresAt.Add(-time.Duration(snap.Session.SessionLength) * time.Second),
	}
	done, err := f.publish(ctx, id, token, g, v)
	if err != nil && !errors.Is(err, errNotHolder) {
		f.release(k, token, id.name)
	}
	if done {
		f.log.Info().Str("credential", id.name).Str("key", pool.Fingerprint(snap.Session.SessionKey)).
			Msg("published this daemon's session: the fleet's was older or gone")
	}
}
