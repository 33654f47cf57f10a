package state

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// FuzzLoad feeds the loader arbitrary files. It must never panic; what it
// accepts must be usable (a key, a lifetime, an expiry after the start) and
// survive a write and a reload unchanged; what it rejects must be explained.
func FuzzLoad(f *testing.F) {
	good := &record{
		Fingerprint: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Kind:        "password", ClientCode: "104729", APIURL: "https://104729.erply.com/api/",
		ErplyExpires: 1795420800, MeasuredAt: start, ExpiresAt: start.Add(time.Hour),
		Session: session{Request: "verifyUser", SessionKey: "k", SessionLength: 3600, ServerTime: 1795417200,
			UserID: 6, UserName: "manager", Token: "a.b.c",
			Endpoints: map[string][]endpoint{"customerRegistryURLs": {{URL: "https://cr/", Token: "t", Priority: 1, Weight: 2,
				Raw: json.RawMessage(`{"url":"https://cr/","token":"t","priority":"1","weight":2}`)}}}},
	}
	b, err := encode(map[string]*record{"pos": good})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][]byte{
		b, b[:len(b)/2], nil, []byte("{"), []byte(`{"version":2}`), []byte(`{"version":1,"credentials":{"pos":null}}`),
		[]byte(`{"version":1,"credentials":{"pos":{"session":{"sessionKey":"k","sessionLength":-1}}}}`),
		bytes.Replace(b, []byte(`"2026-11-23T09:00:00Z"`), []byte(`"9999-12-31T23:59:59+23:59"`), 1),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, findings := parse(data)
		if recs == nil && len(findings) == 0 {
			t.Fatal("a rejected file without a finding")
		}
		for name, r := range recs {
			if p := r.problem(); p != "" {
				t.Fatalf("%q accepted with %s", name, p)
			}
			s := r.upstreamSession()
			if s.SessionKey == "" || s.SessionLength <= 0 || !r.ExpiresAt.After(r.MeasuredAt) {
				t.Fatalf("%q accepted but unusable: %+v", name, r)
			}
		}
		out, err := encode(recs)
		if err != nil {
			t.Fatalf("accepted records cannot be written: %v", err)
		}
		again, more := parse(out)
		if len(more) != 0 || len(again) != len(recs) {
			t.Fatalf("a written file does not load back whole: %d of %d, findings %q", len(again), len(recs), more)
		}
		out2, err := encode(again)
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("write, load, write is not stable (%v):\n%s\n%s", err, out, out2)
		}
	})
}
