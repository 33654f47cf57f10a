// Package erplysession owns a session provider for the official Erply Go SDK (github.com/erply/api-go-wrapper) that takes its sessions from erply-sessiond instead of logging in.
//
// The SDK asks its SessionProvider for a key before every request. Provider
// answers from the session it holds until shortly before that session
// expires, so an SDK call costs no round trip to the daemon, and asks the
// daemon again after that or after Invalidate:
//
//	p := erplysession.New(client.New(client.DefaultSocket), "pos", erplysession.Options{})
//	b, err := p.Builder(ctx) // client code and API URL from the daemon
//	if err != nil { … }
//	cli := b.Build()
//	products, err := cli.ProductManager.GetProducts(ctx, map[string]string{"recordsOnPage": "20"})
//
// The SDK never reacts to 1054/1055 by itself: on such an error call
// cli.InvalidateSession() and retry once. Its Invalidate carries no key, so
// Provider reports the key it handed out last; under concurrency that may be
// a key that already replaced the one that failed, which costs one needless
// login (see Invalidate). The daemon's proxy route (client.Client.Call)
// re-sends after 1054/1055 by itself and has no such caveat.
package erplysession

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/erply/api-go-wrapper/pkg/api"

	"github.com/erply-sessiond/erply-sessiond/client"
)

// Defaults for the zero fields of Options.
const (
	// DefaultMargin: a session is handed out from memory until this long
	// before it expires; after that every GetSession asks the daemon.
	DefaultMargin = time.Minute
	// DefaultTimeout bounds one request to the daemon (the SDK's
	// GetSession and Invalidate take no context).
	DefaultTimeout = 10 * time.Second
)

// Options configure a Provider. The zero value of every field picks its default.
type Options struct {
	// Margin is how long before its expiry a held session is given up
	// (default DefaultMargin).
	Margin time.Duration
	// Timeout bounds each request to the daemon (default DefaultTimeout).
	Timeout time.Duration
	// Now is the clock (default time.Now); tests inject their own.
	Now func() time.Time
}

// Provider implements the SDK's SessionProvider (GetSession, Invalidate)
// for one credential of erply-sessiond. It is safe for concurrent use;
// concurrent callers that need the daemon wait for one request. Make it
// with New.
type Provider struct {
	c       *client.Client
	name    string
	margin  time.Duration
	timeout time.Duration
	now     func() time.Time

	mu     sync.Mutex
	cur    *client.Session
	until  time.Time // cur is handed out from memory before this instant
	handed string    // the key handed out last
	stale  string    // a key to report to the daemon before the next hand-out
}

// New returns a Provider of credential name's sessions, read from the
// daemon through c.
func New(c *client.Client, name string, o Options) *Provider {
	p := &Provider{c: c, name: name, margin: o.Margin, timeout: o.Timeout, now: o.Now}
	if p.margin <= 0 {
		p.margin = DefaultMargin
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	if p.now == nil {
		p.now = time.Now
	}
	return p
}

// GetSession returns the session key for the SDK's next request (the SDK
// calls it before every request).
func (p *Provider) GetSession() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	s, err := p.Session(ctx)
	if err != nil {
		return "", err
	}
	return s.SessionKey, nil
}

// Invalidate is what the SDK's InvalidateSession calls after Erply refused
// a key (1054/1055). It carries no key, so the Provider reports the key it
// handed out last: the next GetSession sends it to the daemon's invalidate
// route (compare-and-refresh: the daemon logs in only if that key is still
// its current one) and hands out the session the daemon answers. If
// another goroutine already got a newer key, the one reported is that newer
// key, and the daemon replaces a live session: one needless login, never a
// wrong key.
func (p *Provider) Invalidate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handed != "" {
		p.stale = p.handed
	}
	p.until = time.Time{}
}

// Session returns the whole session that GetSession would hand out now
// (client code, API URL, user, JWTs), and counts its key as handed out.
func (p *Provider) Session(ctx context.Context) (*client.Session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.cur != nil && p.stale == "" && now.Before(p.until) {
		p.handed = p.cur.SessionKey
		return p.cur, nil
	}
	var (
		s   *client.Session
		err error
	)
	if p.stale != "" {
		s, err = p.c.Invalidate(ctx, p.name, p.stale)
	} else {
		s, err = p.c.Session(ctx, p.name)
	}
	if err != nil {
		return nil, fmt.Errorf("erplysession: credential %q: %w", p.name, err)
	}
	if s.SessionKey == "" || s.ExpiresIn <= 0 {
		return nil, fmt.Errorf("erplysession: credential %q: %w", p.name, errBadAnswer)
	}
	p.stale = ""
	p.cur = s
	// Measured from the local instant of the answer, so that a difference
	// between the daemon's clock and this process's does not matter.
	p.until = now.Add(time.Duration(s.ExpiresIn)*time.Second - p.margin)
	p.handed = s.SessionKey
	return s, nil
}

var errBadAnswer = errors.New("the daemon's answer has no sessionKey or expiresIn")

// Builder returns an SDK ClientBuilder for the credential: its client code
// and API URL as the daemon has them, and p as its SessionProvider. Set
// HttpCli or other fields before Build as needed.
func (p *Provider) Builder(ctx context.Context) (api.ClientBuilder, error) {
	s, err := p.Session(ctx)
	if err != nil {
		return api.ClientBuilder{}, err
	}
	return api.ClientBuilder{ClientCode: s.ClientCode, URL: s.APIURL, SessionProvider: p}, nil
}
