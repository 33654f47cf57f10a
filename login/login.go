// Package login holds the ways a credential gets a new Erply session — verifyUser, switchUser, verifyIdentityToken, verifyOAuthToken — each a pool.Method, chosen by the credential's kind.
package login

import (
	"context"
	"errors"
	"fmt"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Upstream is what the login methods ask of Erply; *upstream.Client implements it.
type Upstream interface {
	VerifyUser(ctx context.Context, acct upstream.Account, username, password string, sessionLength int) (*upstream.Session, error)
	SwitchUser(ctx context.Context, acct upstream.Account, parentSessionKey, pin string, sessionLength int) (*upstream.Session, error)
	VerifyIdentityToken(ctx context.Context, acct upstream.Account, jwt string) (*upstream.Session, error)
	VerifyOAuthToken(ctx context.Context, acct upstream.Account, idToken string, expiresIn int) (*upstream.Session, error)
	GetSessionKeyInfo(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.SessionKeyInfo, error)
	GetSessionKeyUser(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.Session, error)
}

// Methods returns the pool's MethodFor: the method of each credential kind,
// all on up.
func Methods(up Upstream) func(config.Credential) pool.Method {
	password, pin, identity, oauth := Password{up}, PIN{up}, Identity{up}, OAuth{up}
	return func(c config.Credential) pool.Method {
		switch c.Kind {
		case config.KindPIN:
			return pin
		case config.KindIdentity:
			return identity
		case config.KindOAuth:
			return oauth
		case config.KindPassword, "":
			return password
		}
		return nil
	}
}

var (
	_ pool.Method = Password{}
	_ pool.Method = PIN{}
	_ pool.Method = Identity{}
	_ pool.Method = OAuth{}
)

// Password logs in with verifyUser: username and password.
type Password struct{ Up Upstream }

// Login implements pool.Method.
func (m Password) Login(ctx context.Context, cred config.Credential, _ pool.Sessions) (pool.Grant, error) {
	pw, err := cred.Password.Read()
	if err != nil {
		return pool.Grant{}, err
	}
	acct := account(cred)
	sess, err := m.Up.VerifyUser(ctx, acct, cred.Username, pw, cred.SessionLength)
	g, err := withLifetime(ctx, m.Up, acct, "verifyUser", sess, err)
	g.Asked = cred.SessionLength
	return g, err
}

// PIN logs in with switchUser on top of the parent credential's current
// session. If Erply says the parent's key is dead (deleted upstream, as
// after a password change) or too old to switch from, the parent is
// invalidated — one re-login — and the switch is tried once more.
type PIN struct{ Up Upstream }

// Login implements pool.Method.
func (m PIN) Login(ctx context.Context, cred config.Credential, sessions pool.Sessions) (pool.Grant, error) {
	pin, err := cred.PIN.Read()
	if err != nil {
		return pool.Grant{}, err
	}
	parent, err := sessions.Get(ctx, cred.Parent)
	if err != nil {
		return pool.Grant{}, fmt.Errorf("parent %s: %w", cred.Parent, err)
	}
	acct := upstream.Account{ClientCode: parent.ClientCode, APIURL: cred.APIURL}
	if acct.APIURL == "" {
		acct.APIURL = parent.APIURL
	}
	sess, err := m.Up.SwitchUser(ctx, acct, parent.Session.SessionKey, pin, cred.SessionLength)
	if errors.Is(err, upstream.ErrSessionInvalid) || errors.Is(err, upstream.ErrSessionTooOld) {
		parent, err = sessions.Invalidate(ctx, cred.Parent, parent.Session.SessionKey)
		if err != nil {
			return pool.Grant{}, fmt.Errorf("parent %s: %w", cred.Parent, err)
		}
		sess, err = m.Up.SwitchUser(ctx, acct, parent.Session.SessionKey, pin, cred.SessionLength)
	}
	g, err := withLifetime(ctx, m.Up, acct, "switchUser", sess, err)
	g.ParentKey, g.Asked = parent.Session.SessionKey, cred.SessionLength
	return g, err
}

// Identity logs in with verifyIdentityToken (an Identity or Erply JWT read
// from TOKEN_FILE), then asks who the key belongs to: the reply carries
// only the key.
type Identity struct{ Up Upstream }

// Login implements pool.Method.
func (m Identity) Login(ctx context.Context, cred config.Credential, _ pool.Sessions) (pool.Grant, error) {
	tok, err := cred.Token.Read()
	if err != nil {
		return pool.Grant{}, err
	}
	acct := account(cred)
	sess, err := m.Up.VerifyIdentityToken(ctx, acct, tok)
	if err == nil && sess != nil && sess.SessionKey != "" {
		var full *upstream.Session
		if full, err = m.Up.GetSessionKeyUser(ctx, acct, sess.SessionKey); err == nil {
			full.SessionKey, full.Request, full.SessionLength = sess.SessionKey, sess.Request, sess.SessionLength
			sess = full
		}
	}
	return withLifetime(ctx, m.Up, acct, "verifyIdentityToken", sess, err)
}

// OAuth logs in with verifyOAuthToken (an SSO id token read from TOKEN_FILE).
type OAuth struct{ Up Upstream }

// Login implements pool.Method.
func (m OAuth) Login(ctx context.Context, cred config.Credential, _ pool.Sessions) (pool.Grant, error) {
	tok, err := cred.Token.Read()
	if err != nil {
		return pool.Grant{}, err
	}
	acct := account(cred)
	sess, err := m.Up.VerifyOAuthToken(ctx, acct, tok, cred.SessionLength)
	g, err := withLifetime(ctx, m.Up, acct, "verifyOAuthToken", sess, err)
	g.Asked = cred.SessionLength
	return g, err
}

func account(c config.Credential) upstream.Account {
	return upstream.Account{ClientCode: c.ClientCode, APIURL: c.APIURL}
}

// withLifetime completes a login's outcome: a session whose reply carried
// no sessionLength gets its lifetime from getSessionKeyInfo, measured on
// Erply's clock (expireUnixTime − requestUnixTime).
func withLifetime(ctx context.Context, up Upstream, acct upstream.Account, request string, sess *upstream.Session, err error) (pool.Grant, error) {
	if err != nil {
		return pool.Grant{}, err
	}
	if sess == nil || sess.SessionKey == "" {
		return pool.Grant{}, &upstream.Error{Request: request, Err: fmt.Errorf("%w: no session key", upstream.ErrBadReply)}
	}
	if sess.SessionLength <= 0 {
		info, err := up.GetSessionKeyInfo(ctx, acct, sess.SessionKey)
		if err != nil {
			return pool.Grant{}, err
		}
		sess.SessionLength = int64(info.Remaining().Seconds())
	}
	if sess.SessionLength <= 0 {
		return pool.Grant{}, &upstream.Error{Request: request, Err: fmt.Errorf("%w: session has no lifetime", upstream.ErrBadReply)}
	}
	return pool.Grant{Session: sess}, nil
}
