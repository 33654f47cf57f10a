package proxy_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// BenchmarkProxyOverhead measures, in one run against the same fake Erply
// and the same HTTP client, a direct call with the session key and the
// same call through the proxy. The difference is the proxy's overhead
// (one more loopback HTTP hop plus its own work).
func BenchmarkProxyOverhead(b *testing.B) {
	e := newEnv(b, envConfig{})
	key := e.key("pos")
	apiURL := strings.ReplaceAll(e.fake.APIURL(), "{clientCode}", e.code)
	direct := url.Values{"request": {"getProducts"}, "clientCode": {e.code}, "sessionKey": {key}, "sendContentType": {"1"}}.Encode()

	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			req, _ := http.NewRequest(http.MethodPost, apiURL, strings.NewReader(direct))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			a, err := e.do(req)
			if err != nil || a.status != 200 {
				b.Fatalf("%v %v", a, err)
			}
		}
	})
	b.Run("proxied", func(b *testing.B) {
		for b.Loop() {
			a, err := e.call("pos", getProducts)
			if err != nil || a.status != 200 {
				b.Fatalf("%v %v", a, err)
			}
		}
	})
}
