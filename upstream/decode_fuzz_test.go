package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodeReply feeds arbitrary bytes to the reply decoder and the record
// decoders behind it: they must never panic, and each must return either an
// error of the right kind or a result that agrees with its input.
func FuzzDecodeReply(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed replies in testdata: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"status":{"responseStatus":"ok","errorCode":"0","requestUnixTime":"1700000000"},"records":[{"sessionKey":"k","sessionLength":"3600","userID":"6","xURLs":[{"url":"u","priority":"1","weight":2}]}]}`,
		`{"status":{"responseStatus":"ok","errorCode":0},"records":{"token":"a.eyJleHAiOjE3MDAwMDAwMDB9.c"}}`,
		`{"status":{"responseStatus":"ok","errorCode":0},"records":[{"target":"t","port":"70000","priority":1}]}`,
		`{"status":{"responseStatus":"error","errorCode":1054,"errorField":"sessionKey"},"records":null}`,
		`{"status":{"responseStatus":"ok","errorCode":0},"records":[{"sessionKey":"k","sessionLength":1e3,"userID":9.5}]}`,
		`{"status":{"responseStatus":"ok","errorCode":""},"records":[{"creationUnixTime":"","expireUnixTime":"1e9"}]}`,
		`{"status":{"responseStatus":"ok","errorCode":0},"records":[{"sessionKey":"k","aURLs":[],"bURLs":[1],"c":[{"weight":1,"url":{}}]}]}`,
		`{"status":{"responseStatus":"ok","errorCode":0,"requestUnixTime":-5},"records":[]}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		reply, err := decodeReply(body)
		again, err2 := decodeReply(body)
		if !reflect.DeepEqual(reply, again) || !reflect.DeepEqual(err, err2) {
			t.Fatal("decodeReply is not deterministic")
		}
		var e *Error
		switch {
		case err == nil:
			if reply == nil || reply.Status.ErrorCode != 0 || reply.Status.ResponseStatus != "ok" || !bytes.Equal(reply.Body, body) {
				t.Fatalf("success with reply %+v", reply)
			}
		case errors.As(err, &e):
			if e.Code <= 0 || reply == nil || reply.Status.ErrorCode != e.Code || e.Field != reply.Status.ErrorField {
				t.Fatalf("Erply error %#v with reply %+v", e, reply)
			}
			return
		default:
			checkBadReply(t, err)
			if reply != nil {
				t.Fatalf("bad reply %v came with a reply", err)
			}
			return
		}
		if st := reply.Status; st.RequestUnixTime < 0 || (st.RequestUnixTime == 0) != st.ServerTime().IsZero() {
			t.Fatalf("status %+v", st)
		}

		rec, err := reply.FirstRecord()
		if err != nil {
			checkBadReply(t, err)
		} else if _, err := objectFields(rec); err != nil {
			t.Fatalf("FirstRecord returned a non-object %q", rec)
		}

		if s, err := decodeSession("verifyUser", reply); err != nil {
			checkBadReply(t, err)
		} else {
			checkSession(t, rec, s)
		}
		if info, err := decodeSessionKeyInfo(reply); err != nil {
			checkBadReply(t, err)
		} else if info.ExpireTime.IsZero() {
			t.Fatalf("info without expiry: %+v", info)
		}
		for _, field := range []string{"token", "identityToken"} {
			if j, err := decodeJWT(reply, field); err != nil {
				checkBadReply(t, err)
			} else if j.Token == "" {
				t.Fatalf("JWT without token: %+v", j)
			}
		}
	})
}

func checkBadReply(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrBadReply) {
		t.Fatalf("error %v is not ErrBadReply", err)
	}
	// The reason is one of a fixed set of phrases, never a quote of the reply.
	if msg := err.Error(); !strings.HasPrefix(msg, ErrBadReply.Error()+": ") || len(msg) > 100 {
		t.Fatalf("bad-reply message %q", msg)
	}
}

func checkSession(t *testing.T, rec json.RawMessage, s *Session) {
	t.Helper()
	if s.SessionLength < 0 {
		t.Fatalf("negative session length %d", s.SessionLength)
	}
	f, err := objectFields(rec)
	if err != nil {
		t.Fatalf("session from a non-object record")
	}
	for name, list := range s.Endpoints {
		if _, ok := f[name]; !ok {
			t.Fatalf("endpoint list %q is not a field of the record", name)
		}
		for _, ep := range list {
			// Raw is the record as sent; reading it again gives the same endpoint.
			again, ok := decodeEndpoint(ep.Raw)
			if !ok || !reflect.DeepEqual(again, ep) {
				t.Fatalf("endpoint %+v does not match its Raw %s", ep, ep.Raw)
			}
			if !json.Valid(ep.Raw) || ep.Priority < 0 || ep.Weight < 0 || ep.Port < 0 || ep.Port > 65535 ||
				ep.URL == "" && ep.Target == "" {
				t.Fatalf("endpoint %+v", ep)
			}
		}
	}
}
