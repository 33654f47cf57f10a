// Package faultproxy owns a TCP proxy for tests that sits between an HTTP/1.1 client and its server and misbehaves on demand: resets, half-open connections, slow or truncated replies, garbage.
package faultproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is how the proxy treats the next request it reads.
type Mode int32

// The modes. Every mode but Pass and Slow closes the client's connection
// after the request it spoiled.
const (
	// Pass forwards the request and the reply unchanged.
	Pass Mode = iota
	// Reset reads the request and closes the client's connection with a TCP
	// RST (SO_LINGER 0), forwarding nothing.
	Reset
	// HalfOpen reads the request and never answers: the connection stays
	// open until the client closes it or the proxy is closed.
	HalfOpen
	// Slow forwards the request and sends the reply's header at once and its
	// body TrickleBytes at a time, one chunk every TrickleInterval.
	Slow
	// Truncate forwards the request and answers the first half of the
	// reply's body with a Content-Length that matches it: well-formed HTTP
	// carrying cut-off JSON.
	Truncate
	// ResetMidBody forwards the request, sends the reply's header (with the
	// full Content-Length) and half its body, then resets the connection.
	ResetMidBody
	// Garbage reads the request and answers GarbageBytes random bytes that
	// are not HTTP (as a server speaking some other protocol would), then
	// closes the connection.
	Garbage
)

var modeNames = [...]string{"pass", "reset", "half-open", "slow", "truncate", "reset-mid-body", "garbage"}

// String returns the mode's name, as used in test names ("half-open").
func (m Mode) String() string {
	if m >= 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Modes lists every mode but Pass, for tests that try them all.
func Modes() []Mode { return []Mode{Reset, HalfOpen, Slow, Truncate, ResetMidBody, Garbage} }

// Options configure a Proxy. Zero fields take their defaults.
type Options struct {
	// TrickleBytes and TrickleInterval pace the body in Slow mode (defaults 8
	// bytes every 20 ms).
	TrickleBytes    int
	TrickleInterval time.Duration
	// GarbageBytes is how many random bytes Garbage answers (default 512).
	GarbageBytes int
	// Rand is the source of the garbage (default a PCG seeded with 1, so a
	// run is reproducible).
	Rand *rand.Rand
	// MaxReplyBytes caps the reply body read from the server (default 8 MiB);
	// a larger one is cut there.
	MaxReplyBytes int64
	// OnRequest, when set, is called (from the connection's goroutine) each
	// time a request has been read, before the mode acts on it, so a test can
	// see what was sent and wait for a request without polling. It must not
	// block long.
	OnRequest func(Request)
}

// Request is what OnRequest is told about a request the proxy read.
type Request struct {
	// Mode is what the proxy is about to do with it.
	Mode   Mode
	Method string
	Path   string
	// Body is the whole request body (the proxy buffers it, up to 1 MiB).
	Body []byte
}

// maxRequestBytes caps a request body the proxy buffers.
const maxRequestBytes = 1 << 20

// Proxy listens on a loopback port and relays HTTP/1.1 requests to one
// server address. Its methods are safe for concurrent use; switch modes
// with SetMode at any time (it applies from the next request read). Close
// it when done: it closes every connection and waits for its goroutines.
type Proxy struct {
	target string // host:port of the server
	opts   Options
	l      net.Listener
	done   chan struct{}
	wg     sync.WaitGroup

	mode      atomic.Int32
	conns     atomic.Int64
	requests  atomic.Int64
	forwarded atomic.Int64

	mu     sync.Mutex // guards open, closed and rnd
	open   map[net.Conn]struct{}
	closed bool
	rnd    *rand.Rand
}

// New starts a proxy on 127.0.0.1 (a free port) relaying to target, a
// host:port or an http:// URL whose host is used.
func New(target string, opts Options) (*Proxy, error) {
	if host, ok := hostOf(target); ok {
		target = host
	}
	if opts.TrickleBytes <= 0 {
		opts.TrickleBytes = 8
	}
	if opts.TrickleInterval <= 0 {
		opts.TrickleInterval = 20 * time.Millisecond
	}
	if opts.GarbageBytes <= 0 {
		opts.GarbageBytes = 512
	}
	if opts.MaxReplyBytes <= 0 {
		opts.MaxReplyBytes = 8 << 20
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.New(rand.NewPCG(1, 2))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{target: target, opts: opts, l: l, done: make(chan struct{}), open: map[net.Conn]struct{}{}, rnd: rnd}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// hostOf returns the host:port of an http:// URL.
func hostOf(s string) (string, bool) {
	for _, scheme := range []string{"http://", "https://"} {
		if rest, ok := strings.CutPrefix(s, scheme); ok {
			host, _, _ := strings.Cut(rest, "/")
			return host, true
		}
	}
	return "", false
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// URL returns http://host:port of the proxy, to put in place of the server's.
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// SetMode switches the behaviour for every request read from now on.
func (p *Proxy) SetMode(m Mode) { p.mode.Store(int32(m)) }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode { return Mode(p.mode.Load()) }

// Connections returns how many client connections were accepted.
func (p *Proxy) Connections() int64 { return p.conns.Load() }

// Requests returns how many requests were read from clients, whatever the
// mode did with them.
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// Forwarded returns how many requests were sent on to the server.
func (p *Proxy) Forwarded() int64 { return p.forwarded.Load() }

// Close stops accepting, closes every open connection (ending half-open
// waits and trickles) and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.l.Close()
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track registers c so Close can close it; false (and c closed) once closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.open[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		p.conns.Add(1)
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.serve(c)
		}()
	}
}

// session is one client connection and, once needed, its server connection.
type session struct {
	p    *Proxy
	c    net.Conn
	cr   *bufio.Reader
	up   net.Conn
	upr  *bufio.Reader
	done bool
}

func (p *Proxy) serve(c net.Conn) {
	s := &session{p: p, c: c, cr: bufio.NewReader(c)}
	defer func() {
		if s.up != nil {
			p.untrack(s.up)
		}
	}()
	for !s.done {
		req, err := http.ReadRequest(s.cr)
		if err != nil {
			return
		}
		p.requests.Add(1)
		body, err := io.ReadAll(io.LimitReader(req.Body, maxRequestBytes))
		req.Body.Close()
		if err != nil {
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength, req.TransferEncoding = int64(len(body)), nil
		mode := p.Mode()
		if p.opts.OnRequest != nil {
			p.opts.OnRequest(Request{Mode: mode, Method: req.Method, Path: req.URL.Path, Body: body})
		}
		if err := s.handle(req, mode); err != nil {
			return
		}
	}
}

// handle applies mode to one request. An error ends the connection.
func (s *session) handle(req *http.Request, mode Mode) error {
	switch mode {
	case Reset:
		s.reset()
		return errDone
	case HalfOpen:
		// Hold the connection until the client gives up or Close closes it.
		_, _ = io.Copy(io.Discard, s.c)
		return errDone
	case Garbage:
		s.p.mu.Lock()
		b := make([]byte, s.p.opts.GarbageBytes)
		for i := range b {
			b[i] = byte(s.p.rnd.UintN(256))
		}
		s.p.mu.Unlock()
		// Never let it start like a status line by chance.
		b[0] = 0x16
		_, _ = s.c.Write(b)
		return errDone
	}
	resp, body, err := s.forward(req)
	if err != nil {
		return err
	}
	defer func() {
		if resp.Close {
			s.done = true
		}
	}()
	switch mode {
	case Slow:
		head, rest := wire(resp, body)
		if _, err := s.c.Write(head); err != nil {
			return err
		}
		return s.trickle(rest)
	case Truncate:
		head, rest := wire(resp, body[:len(body)/2])
		_, err := s.c.Write(append(head, rest...))
		if err != nil {
			return err
		}
		return errDone
	case ResetMidBody:
		head, rest := wire(resp, body)
		if _, err := s.c.Write(append(head, rest[:len(rest)/2]...)); err != nil {
			return err
		}
		s.reset()
		return errDone
	}
	head, rest := wire(resp, body)
	_, err = s.c.Write(append(head, rest...))
	return err
}

var errDone = errors.New("faultproxy: connection finished by the mode")

// reset closes the client connection with RST instead of FIN.
func (s *session) reset() {
	if tc, ok := s.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	s.c.Close()
}

// forward sends req to the server and reads the whole reply.
func (s *session) forward(req *http.Request) (*http.Response, []byte, error) {
	if s.up == nil {
		up, err := net.Dial("tcp", s.p.target)
		if err != nil {
			return nil, nil, err
		}
		if !s.p.track(up) {
			return nil, nil, errDone
		}
		s.up, s.upr = up, bufio.NewReader(up)
	}
	s.p.forwarded.Add(1)
	if err := req.Write(s.up); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(s.upr, req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.p.opts.MaxReplyBytes))
	if err != nil {
		return nil, nil, err
	}
	return resp, body, nil
}

// wire renders resp with body as HTTP/1.1 bytes: the head (status line and
// headers, with a Content-Length for body) and the body.
func wire(resp *http.Response, body []byte) (head, rest []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %s\r\n", resp.Status)
	h := resp.Header.Clone()
	h.Del("Transfer-Encoding")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if resp.Close {
		h.Set("Connection", "close")
	}
	_ = h.Write(&b)
	b.WriteString("\r\n")
	return b.Bytes(), body
}

// trickle writes b in small chunks, pausing between them, until it is all
// written, the client goes, or the proxy closes.
func (s *session) trickle(b []byte) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for len(b) > 0 {
		select {
		case <-t.C:
		case <-s.p.done:
			return errDone
		}
		n := min(len(b), s.p.opts.TrickleBytes)
		if _, err := s.c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		t.Reset(s.p.opts.TrickleInterval)
	}
	return nil
}
