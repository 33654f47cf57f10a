package srv

import (
	"fmt"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

func TestDownsPrunesExpiredMarksOnMarkDown(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	d := NewDowns(clk, 30*time.Second)
	for i := range 1000 {
		d.MarkDown(fmt.Sprint("old/", i))
	}
	clk.Advance(20 * time.Second)
	d.MarkDown("young")
	clk.Advance(10 * time.Second) // the old marks expire now; "young" has 20s left
	d.MarkDown("new")
	d.mu.Lock()
	n := len(d.until)
	_, young := d.until["young"]
	d.mu.Unlock()
	if n != 2 || !young {
		t.Fatalf("after expiry and one MarkDown: %d marks held (young kept: %v), want 2", n, young)
	}
}
