package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestInspect(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		limit int64
		want  replyStatus
	}{
		{"status first", `{"status":{"errorCode":1054,"requestUnixTime":1795422000},"records":null}`, 1 << 20,
			replyStatus{found: true, errorCode: 1054, serverTime: 1795422000}},
		{"quoted numbers", `{"status":{"errorCode":"1002","requestUnixTime":"1795422000"}}`, 1 << 20,
			replyStatus{found: true, errorCode: 1002, serverTime: 1795422000}},
		{"success", `{"status":{"responseStatus":"ok","errorCode":0},"records":[]}`, 1 << 20,
			replyStatus{found: true}},
		{"status after records", `{"records":[{"status":{"errorCode":1}},[1,2,{}]],"x":"y","status":{"errorCode":1055}}`, 1 << 20,
			replyStatus{found: true, errorCode: 1055}},
		{"nested status only", `{"records":[{"status":{"errorCode":1054}}]}`, 1 << 20, replyStatus{}},
		{"status past the limit", `{"records":[` + strings.Repeat(`1,`, 100) + `1],"status":{"errorCode":1054}}`, 64, replyStatus{}},
		{"status not an object", `{"status":"error"}`, 1 << 20, replyStatus{}},
		{"bad errorCode", `{"status":{"errorCode":"x"}}`, 1 << 20, replyStatus{}},
		{"null errorCode", `{"status":{"errorCode":null}}`, 1 << 20, replyStatus{found: true}},
		{"array", `[1,2]`, 1 << 20, replyStatus{}},
		{"html", `<html>`, 1 << 20, replyStatus{}},
		{"truncated", `{"status":{"errorCode":10`, 1 << 20, replyStatus{}},
		{"empty", ``, 1 << 20, replyStatus{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &trackedReader{r: strings.NewReader(tc.body)}
			head, st := inspect(r, tc.limit)
			if st != tc.want {
				t.Errorf("status %+v, want %+v", st, tc.want)
			}
			rest, _ := io.ReadAll(r)
			if got := string(head) + string(rest); got != tc.body {
				t.Errorf("head+rest = %q, want the reply unchanged", got)
			}
			if r.err != nil {
				t.Errorf("read error %v", r.err)
			}
		})
	}
}

func TestInspectKeepsReadError(t *testing.T) {
	boom := errors.New("connection reset")
	r := &trackedReader{r: io.MultiReader(strings.NewReader(`{"records":[1,`), &failing{boom})}
	_, st := inspect(r, 1<<20)
	if st.found || !errors.Is(r.err, boom) {
		t.Errorf("status %+v, read error %v; want not found and %v", st, r.err, boom)
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }

// FuzzInspect checks that inspection never changes, loses or adds a byte,
// whatever the reply and the limit.
func FuzzInspect(f *testing.F) {
	f.Add([]byte(`{"status":{"errorCode":1054},"records":null}`), int64(1<<20))
	f.Add([]byte(`{"records":[{"a":[1,{"b":"\u00e4"}]}],"status":{"errorCode":"1002","requestUnixTime":"17"}}`), int64(20))
	f.Add([]byte(`{"status":`), int64(3))
	f.Add([]byte("\xff\xfe{\"status\"}"), int64(0))
	f.Fuzz(func(t *testing.T, body []byte, limit int64) {
		if limit < 0 {
			limit = -limit
		}
		limit %= int64(len(body) + 2)
		r := &trackedReader{r: bytes.NewReader(body)}
		head, _ := inspect(r, limit)
		if int64(len(head)) > limit {
			t.Fatalf("held %d bytes, limit %d", len(head), limit)
		}
		rest, _ := io.ReadAll(r)
		if !bytes.Equal(append(head, rest...), body) {
			t.Fatalf("head+rest differs from the reply")
		}
	})
}

func TestRequestLabel(t *testing.T) {
	for in, want := range map[string]string{
		"getProducts": "getProducts", "a": "a", "saveSalesDocument2": "saveSalesDocument2",
		"": "other", "2get": "other", "get-products": "other", "get products": "other",
		"getÄ": "other", strings.Repeat("a", 64): strings.Repeat("a", 64), strings.Repeat("a", 65): "other",
	} {
		if got := requestLabel(in); got != want {
			t.Errorf("requestLabel(%q) = %q, want %q", in, got, want)
		}
	}
}
