package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// TestExitStatus runs every command in-process through runEnv, the way main
// does, and checks the exit status each outcome maps to: one table for
// serve, demo, check-config and get.
func TestExitStatus(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fake := erplytest.New(clock.Real{})
	t.Cleanup(fake.Close)
	code, user, pw, _ := fake.SeedDemo()
	socket := filepath.Join(dir, "s.sock")
	good := []string{
		"SESSIOND_CREDENTIALS=pos", "SESSIOND_SOCKET=" + socket, "SESSIOND_API_URL=" + fake.APIURL(),
		"SESSIOND_POS_CLIENT_CODE=" + code, "SESSIOND_POS_USERNAME=" + user, "SESSIOND_POS_PASSWORD=" + pw,
	}
	bad := append(slices.Clone(good), "SESSIOND_POS_SESSION_LENGTH=0")

	// A daemon served through the serve command, for get to ask.
	ctx, cancel := context.WithCancel(context.Background())
	logs := newLogWatch()
	var served error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		served = runEnv(ctx, []string{"serve"}, good, nil, &bytes.Buffer{}, logs)
	}()
	t.Cleanup(func() { cancel(); <-exited })
	logs.wait(t, `"message":"ready"`, 20*time.Second, exited)

	for _, tc := range []struct {
		name    string
		args    []string
		environ []string
		want    int
		stderr  string // a part of what the user is told
	}{
		{"help", []string{"help"}, nil, exitOK, ""},
		{"flag help", []string{"get", "-h"}, nil, exitOK, "Usage"},
		{"unknown command", []string{"frobnicate"}, nil, exitUsage, "Usage"},
		{"serve: bad flag", []string{"serve", "-frobnicate"}, good, exitUsage, "-frobnicate"},
		{"demo: bad flag", []string{"demo", "-frobnicate"}, nil, exitUsage, "-frobnicate"},
		{"get: no name", []string{"get", "-socket", socket}, good, exitUsage, "Usage"},
		{"get: unknown what", []string{"get", "-socket", socket, "pos", "password"}, good, exitUsage, ""},
		{"serve: invalid configuration", []string{"serve"}, bad, exitConfig, "SESSIOND_POS_SESSION_LENGTH"},
		{"check-config: invalid configuration", []string{"check-config"}, bad, exitConfig, ""},
		{"check-config: unreadable env file", []string{"check-config"}, append(slices.Clone(good), "SESSIOND_ENV_FILE="+filepath.Join(dir, "none")), exitConfig, ""},
		{"check-config: valid", []string{"check-config"}, good, exitOK, ""},
		{"get: key", []string{"get", "pos"}, good, exitOK, ""},
		{"get: --ready", []string{"get", "-socket", socket, "--ready"}, nil, exitOK, ""},
		{"get: the daemon says no", []string{"get", "-socket", socket, "nosuch"}, nil, exitFailure, "unknown credential"},
		{"get: no daemon", []string{"get", "-socket", filepath.Join(dir, "none.sock"), "--health"}, nil, exitUnreachable, "none.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got, msg := exitStatus(runEnv(t.Context(), tc.args, tc.environ, nil, &stdout, &stderr))
			if msg != nil {
				stderr.WriteString(msg.Error())
			}
			if got != tc.want || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("%v = exit %d, want %d with %q\nstdout: %s\nstderr: %s", tc.args, got, tc.want, tc.stderr, &stdout, &stderr)
			}
			if strings.Contains(stdout.String()+stderr.String(), pw) {
				t.Fatal("the output shows the password")
			}
		})
	}

	// A requested stop is a clean stop.
	cancel()
	<-exited
	if got, err := exitStatus(served); got != exitOK {
		t.Fatalf("serve after its context ended = exit %d (%v), want %d", got, err, exitOK)
	}
}

// TestExitStatusDocumented: README.md's table lists exactly the statuses
// the commands use, and the systemd unit does not restart on the one for an
// invalid configuration.
func TestExitStatusDocumented(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Exit status\n")
	if !ok {
		t.Fatal(`README.md has no "## Exit status" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var documented []int
	row := regexp.MustCompile(`(?m)^\| (\d+) \|`)
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		n, _ := strconv.Atoi(m[1])
		documented = append(documented, n)
	}
	if want := []int{exitOK, exitFailure, exitUsage, exitUnreachable, exitConfig}; !slices.Equal(documented, want) {
		t.Fatalf("README.md documents exit statuses %v, the commands use %v", documented, want)
	}

	f, err := os.Open("systemd/erply-sessiond.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var prevent []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RestartPreventExitStatus="); ok {
			prevent = append(prevent, strings.Fields(v)...)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(prevent, []string{strconv.Itoa(exitConfig)}) {
		t.Fatalf("the unit's RestartPreventExitStatus= is %v, want [%d]: an invalid configuration must not restart every RestartSec", prevent, exitConfig)
	}
}
