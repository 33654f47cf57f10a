package proxy

import (
	"bytes"
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
// envelope has been decoded, the reply has ended, it is not a JSON object,
// or limit bytes have been read. It returns every byte it read, unchanged,
// so that head followed by the rest of body is exactly the reply. Erply
// sends status first, so for a large reply only its first few hundred bytes
// are held. A read error is left in body.err.
func inspect(body io.Reader, limit int64) (head []byte, st replyStatus) {
	var buf bytes.Buffer
	dec := json.NewDecoder(io.TeeReader(io.LimitReader(body, limit), &buf))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return buf.Bytes(), st
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return buf.Bytes(), st
		}
		if key, _ := tok.(string); key == "status" {
			var s struct {
				ErrorCode       looseInt `json:"errorCode"`
				RequestUnixTime looseInt `json:"requestUnixTime"`
			}
			if err := dec.Decode(&s); err != nil {
				return buf.Bytes(), st
			}
			return buf.Bytes(), replyStatus{found: true, errorCode: int64(s.ErrorCode), serverTime: int64(s.RequestUnixTime)}
		}
		if err := skipValue(dec); err != nil {
			return buf.Bytes(), st
		}
	}
	return buf.Bytes(), st
}

// skipValue reads past one JSON value token by token, holding no copy of it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
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
