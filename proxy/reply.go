package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// reply is an upstream answer whose start has been read: head holds the
// bytes read so far (the whole reply when it is small), body yields the
// rest exactly as it arrives.
type reply struct {
	resp   *http.Response
	head   []byte
	body   *trackedReader
	status replyStatus
	cancel context.CancelFunc // ends the request's timeout
}

// sessionInvalid reports whether Erply refused the session key (1054/1055).
func (r *reply) sessionInvalid() bool {
	return r.status.found && (r.status.errorCode == upstream.CodeSessionExpired || r.status.errorCode == upstream.CodeSessionInvalid)
}

// discard drops a reply that will not be relayed, reading a little of what
// is left so that the connection can be reused.
func (r *reply) discard() {
	_, _ = io.CopyN(io.Discard, r.resp.Body, 4<<10)
	r.close()
}

// close closes the reply's body and ends its request.
func (r *reply) close() {
	r.resp.Body.Close()
	r.cancel()
}

// trackedReader remembers the first read error other than io.EOF, so that a
// failure of the upstream connection can be told from one of the caller's.
type trackedReader struct {
	r   io.Reader
	err error
}

func (t *trackedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && t.err == nil {
		t.err = err
	}
	return n, err
}

// replyStatus is what the proxy reads of an Erply envelope's "status".
type replyStatus struct {
	found      bool  // the envelope's status member was read
	errorCode  int64 // status.errorCode, 0 for success
	serverTime int64 // status.requestUnixTime, 0 if absent
}

// inspect reads body until the top-level "status" member of the JSON
// envelope has been read, the reply has ended, it is not a JSON object, or
// limit bytes have been read. It returns every byte it read, unchanged, so
// that head followed by the rest of body is exactly the reply. Erply sends
// status first, so for a large reply only its first few hundred bytes are
// held. The members before status are stepped over on the bytes read, not
// decoded: what a reply holds costs nothing beyond the bytes held. A read
// error is left in body.err.
func inspect(body io.Reader, limit int64) (head []byte, st replyStatus) {
	buf := make([]byte, 0, min(limit, 4<<10))
	var sc envelopeScan
	for int64(len(buf)) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(int64(cap(buf)), limit-int64(cap(buf))))...)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if done, v := sc.next(buf); done {
			if v != nil {
				st = decodeStatus(v)
			}
			return buf, st
		}
		if err != nil {
			break
		}
	}
	return buf, st
}

// decodeStatus reads the status object v; found is false when it is not
// one.
func decodeStatus(v []byte) replyStatus {
	var s struct {
		ErrorCode       looseInt `json:"errorCode"`
		RequestUnixTime looseInt `json:"requestUnixTime"`
	}
	if len(v) == 0 || v[0] != '{' || json.Unmarshal(v, &s) != nil {
		return replyStatus{}
	}
	return replyStatus{found: true, errorCode: int64(s.ErrorCode), serverTime: int64(s.RequestUnixTime)}
}

// envelopeScan finds the top-level "status" member in the growing start
// of a reply, resuming where the last call stopped.
type envelopeScan struct {
	opened bool // the envelope's "{" was seen
	sep    bool // a member ended: a "," or "}" is next
	i      int  // where to go on from
}

// next looks at b (the reply so far). done is true when the search is
// over: v is then the status member's value, or nil when there is none
// (the envelope ended, or it is not a JSON object).
func (sc *envelopeScan) next(b []byte) (done bool, v []byte) {
	if !sc.opened {
		j := skipSpace(b, 0)
		if j == len(b) {
			return false, nil
		}
		if b[j] != '{' {
			return true, nil
		}
		sc.opened, sc.i = true, j+1
	}
	for {
		j := skipSpace(b, sc.i)
		if j == len(b) {
			return false, nil
		}
		if sc.sep {
			switch b[j] {
			case ',':
				sc.sep, sc.i = false, j+1
				continue
			default: // "}", the end without a status, or not JSON
				return true, nil
			}
		}
		if b[j] != '"' { // "}": an envelope without status; else not JSON
			return true, nil
		}
		ke := stringEnd(b, j)
		if ke < 0 {
			return false, nil
		}
		c := skipSpace(b, ke)
		if c == len(b) {
			return false, nil
		}
		if b[c] != ':' {
			return true, nil
		}
		vs := skipSpace(b, c+1)
		if vs == len(b) {
			return false, nil
		}
		ve := valueEnd(b, vs)
		if ve < 0 {
			return false, nil
		}
		if string(b[j+1:ke-1]) == "status" {
			return true, b[vs:ve]
		}
		sc.sep, sc.i = true, ve
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the offset just past the string starting at b[i], or
// -1 when b ends first.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// valueEnd returns the offset just past the value starting at b[i], or -1
// when b ends first. It counts brackets and skips strings; it does not
// check the value (status is decoded for real once found).
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				e := stringEnd(b, i)
				if e < 0 {
					return -1
				}
				i = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return -1
}

// looseInt decodes a number that real Erply replies send either bare or
// quoted ("errorCode":"1054"); null and "" are 0.
type looseInt int64

func (n *looseInt) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		b = b[1 : len(b)-1]
	}
	if len(b) == 0 {
		return nil
	}
	if i, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		*n = looseInt(i)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*n = looseInt(f)
	return nil
}
