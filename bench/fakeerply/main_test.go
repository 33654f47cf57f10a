package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestEnvAndCounts runs the helper with three credentials, logs two of them
// in as the daemon would (a password login, then a PIN switch on its key),
// and checks the env file describes the credentials and the counts file
// credits each login to its credential on SIGUSR1 and at exit.
func TestEnvAndCounts(t *testing.T) {
	dir := t.TempDir()
	envPath, countsPath := filepath.Join(dir, "env"), filepath.Join(dir, "counts")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	usr1 := make(chan os.Signal, 1)
	errc := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"-creds", "3", "-env", envPath, "-counts", countsPath}, pw, io.Discard, usr1)
		pw.CloseWithError(io.EOF)
		errc <- err
	}()
	out := bufio.NewScanner(pr)
	apiURL := strings.TrimPrefix(nextLine(t, out), "url ")

	env := readEnv(t, envPath)
	if got, want := env["SESSIOND_CREDENTIALS"], "pos,cashier,pos_2"; got != want {
		t.Fatalf("SESSIOND_CREDENTIALS = %q, want %q", got, want)
	}
	if env["SESSIOND_API_URL"] != apiURL {
		t.Fatalf("SESSIOND_API_URL = %q, printed %q", env["SESSIOND_API_URL"], apiURL)
	}
	if env["SESSIOND_CASHIER_KIND"] != "pin" || env["SESSIOND_CASHIER_PARENT"] != "pos" || len(env["SESSIOND_CASHIER_PIN"]) != 6 {
		t.Fatalf("cashier is not a PIN credential on pos: %v", env)
	}
	if env["SESSIOND_POS_CLIENT_CODE"] == env["SESSIOND_POS_2_CLIENT_CODE"] {
		t.Fatal("pos and pos_2 share an account: their logins could not be told apart")
	}

	code := env["SESSIOND_POS_CLIENT_CODE"]
	key := login(t, apiURL, code, url.Values{"request": {"verifyUser"},
		"username": {env["SESSIOND_POS_USERNAME"]}, "password": {env["SESSIOND_POS_PASSWORD"]}})
	login(t, apiURL, code, url.Values{"request": {"switchUser"}, "sessionKey": {key}, "cardCode": {env["SESSIOND_CASHIER_PIN"]}})

	want := map[string]string{"pos": "1", "cashier": "1", "pos_2": "0"}
	usr1 <- os.Interrupt
	nextLine(t, out)
	checkCounts(t, countsPath, want)

	login(t, apiURL, code, url.Values{"request": {"verifyUser"},
		"username": {env["SESSIOND_POS_USERNAME"]}, "password": {env["SESSIOND_POS_PASSWORD"]}})
	want["pos"] = "2"
	cancel()
	if line := nextLine(t, out); line != "counts "+countsPath {
		t.Fatalf("at exit printed %q", line)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkCounts(t, countsPath, want)
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-creds", "0", "-env", "e", "-counts", "c"},
		{"-creds", "2"},
		{"-env", "e", "-counts", "c", "extra"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard, nil); err == nil {
			t.Errorf("run(%q) = nil, want an error", args)
		}
	}
}

func nextLine(t *testing.T, s *bufio.Scanner) string {
	t.Helper()
	if !s.Scan() {
		t.Fatalf("no output line: %v", s.Err())
	}
	return s.Text()
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			env[k] = v
		}
	}
	return env
}

// login posts an Erply login call and returns the session key it got.
func login(t *testing.T, apiURL, code string, form url.Values) string {
	t.Helper()
	form.Set("clientCode", code)
	res, err := http.PostForm(strings.ReplaceAll(apiURL, "{clientCode}", code), form)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var reply struct {
		Status  struct{ ErrorCode int }
		Records []struct{ SessionKey string }
	}
	if err := json.NewDecoder(res.Body).Decode(&reply); err != nil {
		t.Fatal(err)
	}
	if reply.Status.ErrorCode != 0 || len(reply.Records) != 1 || reply.Records[0].SessionKey == "" {
		t.Fatalf("%s refused: %+v", form.Get("request"), reply)
	}
	http.DefaultClient.CloseIdleConnections()
	return reply.Records[0].SessionKey
}

func checkCounts(t *testing.T, path string, want map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		if f := strings.Split(l, "\t"); len(f) == 5 {
			got[f[0]] = f[3]
		}
	}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %s logins counted, want %s\n%s", name, got[name], n, b)
		}
	}
	if len(got) != len(want) {
		t.Errorf("counts has %d credentials, want %d\n%s", len(got), len(want), b)
	}
}
