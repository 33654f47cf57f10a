package fleet_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// helperEnv makes the test binary a daemon process for TestHolderKilled:
// it adopts the fleet's session, then reports that key stale, takes the
// lock and logs in — and hangs there at the fake until it is SIGKILLed.
const helperEnv = "FLEET_TEST_HELPER"

func runHelper() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "helper:", err); return 2 }
	env := os.Getenv
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	up := upstream.New(upstream.Options{Logger: log, RetryMax: -1})
	f, err := fleet.New(fleet.Options{
		Config: config.Fleet{
			RedisURL: config.Secret{Value: env("FLEET_HELPER_REDIS")}, Name: "test",
			KeyFile: env("FLEET_HELPER_KEYS"), LockTTL: time.Second,
		},
		Logger: log,
	})
	if err != nil {
		return fail(err)
	}
	cred := config.Credential{
		Name: "pos", Kind: config.KindPassword, ClientCode: env("FLEET_HELPER_CODE"), APIURL: env("FLEET_HELPER_API"),
		Username: env("FLEET_HELPER_USER"), Password: config.Secret{File: env("FLEET_HELPER_PWFILE")}, SessionLength: 3600,
	}
	p, err := pool.New(pool.Options{MethodFor: f.Methods(login.Methods(up)), Upstream: up,
		Credentials: []config.Credential{cred}, Logger: log, Renewer: f, LoginTimeout: time.Minute})
	if err != nil {
		return fail(err)
	}
	if err := f.Open(p); err != nil {
		return fail(err)
	}
	ctx := context.Background()
	s, err := p.Get(ctx, "pos")
	if err != nil {
		return fail(err)
	}
	_, err = p.Invalidate(ctx, "pos", s.Session.SessionKey)
	return fail(fmt.Errorf("the login was meant to hang until SIGKILL, it ended: %v", err))
}
