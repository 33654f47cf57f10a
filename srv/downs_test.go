package srv_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/srv"
)

var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func TestDownsExpiry(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(epoch)
	d := srv.NewDowns(clk, 30*time.Second)
	d.MarkDown("pos/customerRegistryURLs/https://a/")
	if !d.IsDown("pos/customerRegistryURLs/https://a/") {
		t.Fatal("not down right after MarkDown")
	}
	if d.IsDown("pos/customerRegistryURLs/https://b/") || d.IsDown("pos/customerRegistryURLs/") {
		t.Fatal("a key never marked is down")
	}
	clk.Advance(30*time.Second - time.Nanosecond)
	if !d.IsDown("pos/customerRegistryURLs/https://a/") {
		t.Fatal("up again before the cool-down elapsed")
	}
	clk.Advance(time.Nanosecond)
	if d.IsDown("pos/customerRegistryURLs/https://a/") {
		t.Fatal("still down once the cool-down elapsed")
	}
}

func TestDownsMarkAgainRestartsCooldown(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(epoch)
	d := srv.NewDowns(clk, 30*time.Second)
	d.MarkDown("k")
	clk.Advance(20 * time.Second)
	d.MarkDown("k")
	clk.Advance(20 * time.Second) // 40s after the first mark, 20s after the second
	if !d.IsDown("k") {
		t.Fatal("second mark did not restart the cool-down")
	}
	clk.Advance(10 * time.Second)
	if d.IsDown("k") {
		t.Fatal("still down 30s after the last mark")
	}
}

func TestDownsNonPositiveCooldownMarksNothing(t *testing.T) {
	t.Parallel()
	for _, cd := range []time.Duration{0, -time.Second} {
		d := srv.NewDowns(clock.NewFake(epoch), cd)
		d.MarkDown("k")
		if d.IsDown("k") {
			t.Errorf("cooldown %v: key is down", cd)
		}
	}
}

func TestDownsForget(t *testing.T) {
	t.Parallel()
	d := srv.NewDowns(clock.NewFake(epoch), time.Minute)
	keys := []string{"pos/a/x", "pos/b/y", "posx/a/x", "bo/a/x"}
	for _, k := range keys {
		d.MarkDown(k)
	}
	d.Forget("pos/")
	for k, want := range map[string]bool{"pos/a/x": false, "pos/b/y": false, "posx/a/x": true, "bo/a/x": true} {
		if got := d.IsDown(k); got != want {
			t.Errorf("after Forget(pos/): IsDown(%q) = %v, want %v", k, got, want)
		}
	}
	d.Forget("bo/a/x")
	if d.IsDown("bo/a/x") || !d.IsDown("posx/a/x") {
		t.Error("Forget(full key) did not clear exactly that key")
	}
	d.Forget("")
	if d.IsDown("posx/a/x") {
		t.Error(`Forget("") left a mark`)
	}
}

func TestDownsConcurrentUse(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(epoch)
	d := srv.NewDowns(clk, time.Minute)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("c%d/l/%d", g, i)
				d.MarkDown(key)
				if !d.IsDown(key) {
					t.Errorf("%s not down right after MarkDown", key)
				}
				if g%2 == 1 {
					d.Forget(key)
				}
			}
		})
	}
	wg.Wait()
	for g := range 8 {
		for i := range 200 {
			key := fmt.Sprintf("c%d/l/%d", g, i)
			if want := g%2 == 0; d.IsDown(key) != want {
				t.Fatalf("IsDown(%s) = %v, want %v", key, !want, want)
			}
		}
	}
}

// TestOrderWithDowns is the way localapi combines the two: an endpoint marked
// down moves behind the healthy ones for exactly the cool-down.
func TestOrderWithDowns(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(epoch)
	d := srv.NewDowns(clk, 30*time.Second)
	list := []ep{{name: "primary", prio: 0, weight: 1}, {name: "backup", prio: 1, weight: 1}}
	down := func(e ep) bool { return d.IsDown("pos/list/" + e.name) }
	order := func() string { return names(srv.Order(list, attr, down, (&script{t: t}).intn)) }

	if got := order(); got != "primary backup" {
		t.Fatalf("before any mark: %q", got)
	}
	d.MarkDown("pos/list/primary")
	if got := order(); got != "backup primary" {
		t.Fatalf("primary marked down: %q, want %q", got, "backup primary")
	}
	clk.Advance(30 * time.Second)
	if got := order(); got != "primary backup" {
		t.Fatalf("after the cool-down: %q, want %q", got, "primary backup")
	}
}
