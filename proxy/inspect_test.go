package proxy

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzInspectAgreesWithJSON: on a valid JSON object, the scan finds the
// top-level status exactly when json.Unmarshal does, with the same codes.
func FuzzInspectAgreesWithJSON(f *testing.F) {
	for _, s := range []string{
		`{"status":{"errorCode":1054},"records":null}`,
		`{"records":[{"status":{"errorCode":1}},"]}{\"",[1,[2,{}]]],"x":-1.5e3,"y":true,"status":{"errorCode":"1055","requestUnixTime":17}}`,
		`{"a":{"status":{"errorCode":7}}}`, `{ "status" : { "errorCode" : null } }`, `{"status":[1]}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var top map[string]json.RawMessage
		if json.Unmarshal(body, &top) != nil || top == nil || bytes.Contains(body, []byte(`\`)) {
			return // not an object; or escapes, which could spell "status" differently
		}
		var want replyStatus
		if raw, ok := top["status"]; ok && bytes.Count(body, []byte(`"status"`)) == 1 {
			want = decodeStatus(bytes.TrimSpace(raw))
		} else if ok {
			return // several members named status: json keeps the last, the scan the first
		}
		_, got := inspect(&trackedReader{r: bytes.NewReader(body)}, int64(len(body))+1)
		if got != want {
			t.Fatalf("inspect = %+v, json says %+v", got, want)
		}
	})
}
