package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// A login against the fake Erply, then a look at the session's lifetime on
// Erply's clock, and a refused login.
func ExampleClient_VerifyUser() {
	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	code, user, password, _ := fake.SeedDemo()

	c := upstream.New(upstream.Options{})
	defer c.CloseIdleConnections()
	acct := upstream.Account{ClientCode: code, APIURL: fake.APIURL()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	s, err := c.VerifyUser(ctx, acct, user, password, 3600)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(s.UserName, s.UserID, s.SessionLength)
	fmt.Println(len(s.Endpoints) > 0)

	info, err := c.GetSessionKeyInfo(ctx, acct, s.SessionKey)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(info.Remaining() > 59*time.Minute)

	_, err = c.VerifyUser(ctx, acct, user, "wrong password", 3600)
	fmt.Println(err, errors.Is(err, upstream.ErrLoginRefused))
	// Output:
	// manager@demo.example 6 3600
	// true
	// true
	// erply verifyUser: error 1051 (login refused) true
}
