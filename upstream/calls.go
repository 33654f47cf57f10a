package upstream

import (
	"context"
	"errors"
	"net/url"
	"strconv"
)

// VerifyUser logs in with a user name and password. sessionLength is the
// wanted lifetime in seconds; 0 leaves it to Erply (3600).
func (c *Client) VerifyUser(ctx context.Context, acct Account, username, password string, sessionLength int) (*Session, error) {
	form := url.Values{"username": {username}, "password": {password}}
	setSessionLength(form, sessionLength)
	return c.login(ctx, acct, "verifyUser", form)
}

// SwitchUser logs in with a PIN on top of parentSessionKey, which must be
// valid or expired less than two hours ago (else ErrSessionTooOld).
func (c *Client) SwitchUser(ctx context.Context, acct Account, parentSessionKey, pin string, sessionLength int) (*Session, error) {
	form := url.Values{"sessionKey": {parentSessionKey}, "cardCode": {pin}}
	setSessionLength(form, sessionLength)
	return c.login(ctx, acct, "switchUser", form)
}

// VerifyIdentityToken exchanges an Identity (or Erply) JWT for a session key.
// Its reply carries only the key: SessionLength is 0, ask GetSessionKeyInfo.
func (c *Client) VerifyIdentityToken(ctx context.Context, acct Account, jwt string) (*Session, error) {
	return c.login(ctx, acct, "verifyIdentityToken", url.Values{"jwt": {jwt}})
}

// VerifyOAuthToken logs in with a single sign-on id token; expiresIn is the
// wanted session length in seconds.
func (c *Client) VerifyOAuthToken(ctx context.Context, acct Account, idToken string, expiresIn int) (*Session, error) {
	form := url.Values{"idToken": {idToken}, "expiresIn": {strconv.Itoa(expiresIn)}}
	return c.login(ctx, acct, "verifyOAuthToken", form)
}

// ChangePassword changes the session's user's password (Erply's
// changePassword) and returns the new session it makes; Erply deletes every
// other session of the user, sessionKey's included. sessionLength is the
// wanted lifetime in seconds (0 leaves it to Erply: 3600). Erply refuses
// with 1010 (a password unset), 1012 (new equals old) or 1016 (errorField
// newPassword: too weak; oldPassword: wrong). The call is never repeated
// unless Erply certainly did not act on it, so an error without an Erply
// code (network, timeout, HTTP 5xx) leaves the outcome unknown.
func (c *Client) ChangePassword(ctx context.Context, acct Account, sessionKey, oldPassword, newPassword string, sessionLength int) (*Session, error) {
	form := url.Values{"sessionKey": {sessionKey}, "oldPassword": {oldPassword}, "newPassword": {newPassword}}
	setSessionLength(form, sessionLength)
	return c.login(ctx, acct, "changePassword", form)
}

// GetSessionKeyInfo returns the creation and expiry times of sessionKey, on
// Erply's clock.
func (c *Client) GetSessionKeyInfo(ctx context.Context, acct Account, sessionKey string) (*SessionKeyInfo, error) {
	var info *SessionKeyInfo
	_, err := c.call(ctx, acct, "getSessionKeyInfo", url.Values{"sessionKey": {sessionKey}}, func(r *Reply) (err error) {
		info, err = decodeSessionKeyInfo(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	return info, nil
}

// GetSessionKeyUser returns what verifyUser returned for sessionKey, without
// making a new session.
func (c *Client) GetSessionKeyUser(ctx context.Context, acct Account, sessionKey string) (*Session, error) {
	const request = "getSessionKeyUser"
	var s *Session
	_, err := c.call(ctx, acct, request, url.Values{"sessionKey": {sessionKey}}, func(r *Reply) (err error) {
		if s, err = decodeSession(request, r); err == nil {
			c.warnUnreadableIDs(request, r)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.SessionKey == "" {
		s.SessionKey = sessionKey
	}
	return s, nil
}

// GetJwtToken returns the session's Erply JWT.
func (c *Client) GetJwtToken(ctx context.Context, acct Account, sessionKey string) (*JWT, error) {
	return c.jwt(ctx, acct, "getJwtToken", "token", sessionKey)
}

// GetIdentityToken returns the session's Identity JWT.
func (c *Client) GetIdentityToken(ctx context.Context, acct Account, sessionKey string) (*JWT, error) {
	return c.jwt(ctx, acct, "getIdentityToken", "identityToken", sessionKey)
}

func (c *Client) jwt(ctx context.Context, acct Account, request, field, sessionKey string) (*JWT, error) {
	var j *JWT
	_, err := c.call(ctx, acct, request, url.Values{"sessionKey": {sessionKey}}, func(r *Reply) (err error) {
		j, err = decodeJWT(r, field)
		return err
	})
	if err != nil {
		return nil, err
	}
	return j, nil
}

// login makes a call whose reply is a new session, which must carry its key.
func (c *Client) login(ctx context.Context, acct Account, request string, form url.Values) (*Session, error) {
	var s *Session
	_, err := c.call(ctx, acct, request, form, func(r *Reply) (err error) {
		if s, err = decodeSession(request, r); err == nil && s.SessionKey == "" {
			err = badReply("no sessionKey")
		}
		if err == nil {
			c.warnUnreadableIDs(request, r)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func setSessionLength(form url.Values, seconds int) {
	if seconds > 0 {
		form.Set("sessionLength", strconv.Itoa(seconds))
	}
}

// warnUnreadableIDs logs one warning for a session reply whose ID fields
// are not numbers (they were read as 0). It names the fields, never values.
func (c *Client) warnUnreadableIDs(request string, r *Reply) {
	if bad := unreadableIDs(r); len(bad) > 0 {
		c.log.Warn().Str("request", request).Strs("fields", bad).
			Msg("erply reply: ID fields that are not numbers were read as 0")
	}
}

// SessionKeyDead reports whether Erply refuses sessionKey: it asks
// getSessionKeyInfo and says true only when that answers 1054 or 1055.
// Erply's wiki says an expired session may be answered with HTTP 403
// instead of 1054; this tells such a 403 from one for another reason,
// which must not cost a login. Any other outcome (a live key, no answer, a
// 403 to getSessionKeyInfo itself) is false.
func (c *Client) SessionKeyDead(ctx context.Context, acct Account, sessionKey string) bool {
	if sessionKey == "" {
		return false
	}
	_, err := c.GetSessionKeyInfo(ctx, acct, sessionKey)
	return errors.Is(err, ErrSessionInvalid)
}
