package upstream

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strconv"
	"testing"
)

// allocated is how many bytes f allocates, and what stays reachable after.
func allocated(f func()) (total, live uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	total = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc > before.HeapAlloc {
		live = after.HeapAlloc - before.HeapAlloc
	}
	return total, live
}

// hostileReplies are login replies of about 3 MB that a broken or
// hostile server could send: what the daemon does not use must cost it
// next to nothing.
func hostileReplies() map[string][]byte {
	const n = 1_000_000
	ok := `{"status":{"request":"verifyUser","requestUnixTime":1795420800,"responseStatus":"ok","errorCode":0},"records":`
	rec := `{"sessionKey":"k-0123456789","sessionLength":3600,"userID":"6"`
	var many, manyFields, manyEndpoints, manyKeys bytes.Buffer
	many.WriteString(ok + "[" + rec + "}")
	manyFields.WriteString(ok + "[" + rec)
	manyEndpoints.WriteString(ok + "[" + rec + `,"customerRegistryURLs":[`)
	manyKeys.WriteString(`{"status":{"responseStatus":"ok","errorCode":0}`)
	for i := range n {
		many.WriteString(",1")
		if i < n/4 {
			manyFields.WriteString(`,"f` + strconv.Itoa(i) + `":[]`)
			manyKeys.WriteString(`,"k` + strconv.Itoa(i) + `":1`)
		}
		if i < n/20 {
			if i > 0 {
				manyEndpoints.WriteByte(',')
			}
			manyEndpoints.WriteString(`{"url":"https://x` + strconv.Itoa(i) + `.example/","token":"t","priority":1,"weight":1}`)
		}
	}
	many.WriteString("]}")
	manyFields.WriteString("}]}")
	manyEndpoints.WriteString("]}]}")
	manyKeys.WriteString(`,"records":[` + rec + "}]}")
	return map[string][]byte{
		"a million records":           many.Bytes(),
		"a record of 250k fields":     manyFields.Bytes(),
		"50k endpoints in one list":   manyEndpoints.Bytes(),
		"an envelope of 250k members": manyKeys.Bytes(),
	}
}

// Issue 16 item 10: a 3 MB login reply with 10^6 records drove the RSS
// to 141 MB, because every record was materialised to find the first.
// Decoding a login reply now allocates less than its size, however it is
// shaped (before: 138 MB for 2 MB of records, 115 MB for a record of 250k
// fields, 84 MB for 50k endpoints, 58 MB for 250k envelope members).
func TestHostileLoginRepliesCostLittleMemory(t *testing.T) {
	for name, body := range hostileReplies() {
		t.Run(name, func(t *testing.T) {
			var s *Session
			var err error
			total, live := allocated(func() {
				var r *Reply
				if r, err = decodeReply(body); err == nil {
					s, err = decodeSession("verifyUser", r)
				}
			})
			if err != nil || s.SessionKey != "k-0123456789" {
				t.Fatalf("decode: %v", err)
			}
			t.Logf("%.1f MB reply: %.1f MB allocated, %.1f MB kept", float64(len(body))/1e6, float64(total)/1e6, float64(live)/1e6)
			if limit := uint64(len(body)); total > limit {
				t.Errorf("decoding allocated %d bytes for a %d-byte reply, want at most its size", total, len(body))
			}
			if len(s.Endpoints["customerRegistryURLs"]) > 1000 {
				t.Errorf("%d endpoints kept, want a list that long left out", len(s.Endpoints["customerRegistryURLs"]))
			}
		})
	}
}

// FuzzPickFields: the allocation-free walk over an object agrees with
// json.Unmarshal into a map, member for member, and refuses what it refuses.
func FuzzPickFields(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"b":"x\"y","c":[1,{"d":"]"}],"a":2}`, `{}`, ` { "k" : { } , "l":[ ] } `,
		`{"\u0073essionKey":"k","x":null,"y":true,"z":-1.5e3}`, `[1]`, `{"a":}`, `{"a":"\\"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want, werr := objectFields(b)
		got, gerr := pickFields(b, func([]byte, []byte) bool { return true })
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("pickFields error %v, json.Unmarshal %v", gerr, werr)
		}
		if len(got) != len(want) {
			t.Fatalf("%d members, want %d", len(got), len(want))
		}
		for k, v := range want {
			if !bytes.Equal(bytes.TrimSpace(got[k]), bytes.TrimSpace(v)) {
				t.Fatalf("member %q = %q, want %q", k, got[k], v)
			}
		}
		var arr []json.RawMessage
		if json.Unmarshal(b, &arr) == nil && len(arr) > 0 {
			var first []byte
			elements(bytes.TrimSpace(b), func(v []byte) bool { first = v; return false })
			if !bytes.Equal(first, bytes.TrimSpace(arr[0])) {
				t.Fatalf("first element %q, want %q", first, arr[0])
			}
		}
	})
}
