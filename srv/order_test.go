package srv_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/srv"
)

// ep is a test endpoint: a name plus the attributes Order reads.
type ep struct {
	name   string
	prio   int
	weight int
	down   bool
}

func attr(e ep) (int, int) { return e.prio, e.weight }
func isDown(e ep) bool     { return e.down }

func names(list []ep) string {
	s := make([]string, len(list))
	for i, e := range list {
		s[i] = e.name
	}
	return strings.Join(s, " ")
}

// script is an intn that returns prepared values in turn and records the n of
// every call, so a test states exactly which draws Order makes.
type script struct {
	t    testing.TB
	vals []int
	ns   []int
}

func (s *script) intn(n int) int {
	s.t.Helper()
	s.ns = append(s.ns, n)
	if len(s.vals) == 0 {
		s.t.Fatalf("intn(%d) called after the script ran out; calls so far %v", n, s.ns)
	}
	v := s.vals[0]
	s.vals = s.vals[1:]
	return v
}

func TestOrderScripted(t *testing.T) {
	t.Parallel()
	const (
		third     = 3074457345618258602 // (MaxInt-1)/3: a MaxInt weight clamped in a group of 3
		twoThirds = 2*third + 1         // intn's n once one of three clamped weights is gone
	)
	tests := []struct {
		name   string
		list   []ep
		noAttr bool // pass a nil attr
		noDown bool // pass a nil down
		draws  []int
		wantNs []int // the n of every intn call, in order
		want   string
	}{
		{
			name:   "one priority weighted",
			list:   []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}},
			draws:  []int{75, 65}, // 75 in running sums 60,90,100 -> b; 65 in 60,70 -> c
			wantNs: []int{101, 71},
			want:   "b c a",
		},
		{
			name:   "running sum equal to r selects that entry",
			list:   []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}},
			draws:  []int{60, 40}, // 60 <= 60 -> a; 40 in 30,40 -> c
			wantNs: []int{101, 41},
			want:   "a c b",
		},
		{
			name:   "r one past a running sum selects the next entry",
			list:   []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}},
			draws:  []int{61, 0},
			wantNs: []int{101, 71},
			want:   "b a c",
		},
		{
			name: "multiple priorities ascend, each weighted on its own",
			list: []ep{
				{name: "x", prio: 2, weight: 1}, {name: "y", prio: 1, weight: 5}, {name: "z", prio: 1, weight: 5},
				{name: "w", prio: 0, weight: 0}, {name: "v", prio: 2, weight: 3},
			},
			draws:  []int{6, 1}, // priority 1: 6 in 5,10 -> z; priority 2: 1 in 1,4 -> x
			wantNs: []int{11, 5},
			want:   "w z y x v",
		},
		{
			name:  "zero weights go first in the arrangement and win only r == 0",
			list:  []ep{{name: "a"}, {name: "b", weight: 10}, {name: "c"}, {name: "d", weight: 20}},
			draws: []int{0, 0, 0, 11}, // shuffle [a c] -> [c a]; r=0 -> c; r=0 -> a; 11 in 10,30 -> d
			// sum stays 30 while zero-weight entries are removed.
			wantNs: []int{2, 31, 31, 31},
			want:   "c a d b",
		},
		{
			name:   "zero weights skipped when r > 0, then left in shuffled order",
			list:   []ep{{name: "a"}, {name: "b", weight: 10}, {name: "c"}, {name: "d", weight: 20}},
			draws:  []int{1, 5, 20}, // shuffle keeps [a c]; 5 in 0,0,10,30 -> b; 20 in 0,0,20 -> d
			wantNs: []int{2, 31, 21},
			want:   "b d a c",
		},
		{
			name:   "all zero weights: a Fisher-Yates shuffle and nothing else",
			list:   []ep{{name: "a"}, {name: "b"}, {name: "c"}},
			draws:  []int{0, 0}, // swap(2,0) -> c b a; swap(1,0) -> b c a
			wantNs: []int{3, 2},
			want:   "b c a",
		},
		{
			name:   "all zero weights, identity shuffle",
			list:   []ep{{name: "a"}, {name: "b"}, {name: "c"}},
			draws:  []int{2, 1},
			wantNs: []int{3, 2},
			want:   "a b c",
		},
		{
			name: "down endpoints after every healthy one, ordered by the same rules",
			list: []ep{
				{name: "a", prio: 1, weight: 10, down: true}, {name: "b", weight: 10},
				{name: "c", weight: 0, down: true}, {name: "d", prio: 1, weight: 10},
				{name: "e", weight: 5, down: true}, {name: "f", weight: 10},
			},
			// healthy p0: 15 in 10,20 -> f; down p0 [c e]: 3 in 0,5 -> e
			draws:  []int{15, 3},
			wantNs: []int{21, 6},
			want:   "f b d e c a",
		},
		{
			name:   "all down: ordered as if healthy",
			list:   []ep{{name: "a", prio: 1, down: true}, {name: "b", prio: 0, weight: 1, down: true}, {name: "c", prio: 0, weight: 1, down: true}},
			draws:  []int{2},
			wantNs: []int{3},
			want:   "c b a",
		},
		{name: "nil list", list: nil, want: ""},
		{name: "empty list", list: []ep{}, want: ""},
		{name: "one element draws nothing", list: []ep{{name: "a", prio: -4, weight: 7}}, want: "a"},
		{name: "one down element draws nothing", list: []ep{{name: "a", down: true}}, want: "a"},
		{
			name:   "negative priority and weight count as zero",
			list:   []ep{{name: "a", weight: 1}, {name: "b", prio: -3, weight: -7}, {name: "c", prio: -1, weight: 2}},
			draws:  []int{0, 2}, // one priority; arrangement b(0) a(1) c(2): r=0 -> b; 2 in 1,3 -> c
			wantNs: []int{4, 4},
			want:   "b c a",
		},
		{
			name:   "huge weights are clamped so sum+1 fits an int",
			list:   []ep{{name: "a", weight: math.MaxInt}, {name: "b", weight: math.MaxInt}, {name: "c", weight: math.MaxInt}},
			draws:  []int{math.MaxInt - 1, 0},
			wantNs: []int{math.MaxInt, twoThirds},
			want:   "c a b",
		},
		{
			name: "huge priorities sort without overflow",
			list: []ep{{name: "a", prio: math.MaxInt}, {name: "b", prio: math.MinInt}, {name: "c", prio: math.MaxInt - 1}},
			want: "b c a",
		},
		{
			name:   "out-of-range intn results are reduced modulo n",
			list:   []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}},
			draws:  []int{-1, 136}, // -1 -> 100 -> c; 136 mod 91 = 45 in 60,90 -> a
			wantNs: []int{101, 91},
			want:   "c a b",
		},
		{
			name:   "MinInt from intn is reduced too",
			list:   []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}},
			draws:  []int{math.MinInt, 31}, // MinInt mod 101 = 11 -> a; 31 in 30,40 -> c
			wantNs: []int{101, 41},
			want:   "a c b",
		},
		{
			name:   "nil attr: one priority, all weight 0",
			list:   []ep{{name: "a", prio: 5, weight: 9}, {name: "b", weight: 1}, {name: "c", prio: 1}},
			noAttr: true,
			draws:  []int{0, 0},
			wantNs: []int{3, 2},
			want:   "b c a",
		},
		{
			name:   "nil down: nothing is down",
			list:   []ep{{name: "a", prio: 1, down: true}, {name: "b", prio: 2}},
			noDown: true,
			want:   "a b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &script{t: t, vals: slices.Clone(tc.draws)}
			a, d := attr, isDown
			if tc.noAttr {
				a = nil
			}
			if tc.noDown {
				d = nil
			}
			got := srv.Order(tc.list, a, d, s.intn)
			if got == nil {
				t.Fatal("Order returned nil, want a non-nil slice")
			}
			if names(got) != tc.want {
				t.Errorf("order = %q, want %q", names(got), tc.want)
			}
			if !slices.Equal(s.ns, tc.wantNs) {
				t.Errorf("intn called with %v, want %v", s.ns, tc.wantNs)
			}
			if len(s.vals) != 0 {
				t.Errorf("%d scripted draws left unused", len(s.vals))
			}
		})
	}
}

func TestOrderLeavesInputAlone(t *testing.T) {
	t.Parallel()
	list := []ep{{name: "a", weight: 1}, {name: "b", weight: 1, down: true}, {name: "c", prio: -1}}
	orig := slices.Clone(list)
	// c counts as priority 0 with weight 0: arranged before a, it wins r = 0.
	got := srv.Order(list, attr, isDown, (&script{t: t, vals: []int{0}}).intn)
	if !slices.Equal(list, orig) {
		t.Fatalf("input changed to %v", list)
	}
	if names(got) != "c a b" {
		t.Fatalf("order = %q, want %q", names(got), "c a b")
	}
	got[0].name = "changed"
	if list[2].name != "c" {
		t.Fatal("result shares its backing array with the input")
	}
}

func TestOrderReadsEachElementOnce(t *testing.T) {
	t.Parallel()
	list := []ep{{name: "a", weight: 3}, {name: "b", weight: 1}, {name: "c"}, {name: "d", down: true}}
	attrCalls := map[string]int{}
	downCalls := map[string]int{}
	// A down() that flips on every call would make a second read disagree
	// with the first; Order must decide from one read.
	srv.Order(list,
		func(e ep) (int, int) { attrCalls[e.name]++; return attr(e) },
		func(e ep) bool { downCalls[e.name]++; return e.down },
		rand.New(rand.NewPCG(1, 2)).IntN)
	for _, e := range list {
		if attrCalls[e.name] != 1 || downCalls[e.name] != 1 {
			t.Errorf("%s: attr called %d times, down %d times; want once each", e.name, attrCalls[e.name], downCalls[e.name])
		}
	}
}

func TestOrderNilIntnUsesDefaultSource(t *testing.T) {
	t.Parallel()
	// Distinct priorities leave nothing to chance, so the order is exact
	// whatever the default source draws.
	list := []ep{{name: "a", prio: 3, weight: 5}, {name: "b", prio: 1, weight: 5, down: true}, {name: "c", prio: 2}, {name: "d", prio: 0, weight: 9}}
	for range 100 {
		if got := names(srv.Order(list, attr, isDown, nil)); got != "d c a b" {
			t.Fatalf("order = %q, want %q", got, "d c a b")
		}
	}
	// And with ties it still yields every endpoint once.
	tied := []ep{{name: "a", weight: 5}, {name: "b", weight: 0}, {name: "c", weight: 1}}
	got := names(srv.Order(tied, attr, isDown, nil))
	s := strings.Fields(got)
	slices.Sort(s)
	if strings.Join(s, " ") != "a b c" {
		t.Fatalf("order = %q, not a permutation of a b c", got)
	}
}

// chiSquare returns Pearson's statistic for observed counts against
// probabilities p over n trials.
func chiSquare(observed []int, p []float64, n int) float64 {
	x := 0.0
	for i, o := range observed {
		e := p[i] * float64(n)
		x += (float64(o) - e) * (float64(o) - e) / e
	}
	return x
}

// firstPicks orders list n times with a fixed-seed PCG and counts how often
// each element comes first.
func firstPicks(list []ep, n int, seed uint64) []int {
	rng := rand.New(rand.NewPCG(seed, 2782))
	idx := map[string]int{}
	for i, e := range list {
		idx[e.name] = i
	}
	counts := make([]int, len(list))
	for range n {
		counts[idx[srv.Order(list, attr, isDown, rng.IntN)[0].name]]++
	}
	return counts
}

func TestOrderFirstPickFollowsWeights(t *testing.T) {
	t.Parallel()
	const n = 100000
	list := []ep{{name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}}
	counts := firstPicks(list, n, 1)
	// RFC 2782 draws r from [0, 100] inclusive, so the entry first in the
	// arrangement also owns r = 0: exactly 61/101, 30/101, 10/101.
	p := []float64{61.0 / 101, 30.0 / 101, 10.0 / 101}
	x := chiSquare(counts, p, n)
	t.Logf("first picks %v, chi-square %.2f", counts, x)
	if x >= 13.816 { // 0.001 critical value, 2 degrees of freedom
		t.Errorf("first-pick counts %v: chi-square %.2f >= 13.816 against %v", counts, x, p)
	}
}

func TestOrderZeroWeightIsFirstRarelyButNotNever(t *testing.T) {
	t.Parallel()
	const n = 100000
	list := []ep{{name: "z", weight: 0}, {name: "a", weight: 60}, {name: "b", weight: 30}, {name: "c", weight: 10}}
	counts := firstPicks(list, n, 2)
	// The zero-weight entry sits first with running sum 0 and wins r = 0 of
	// [0, 100]: probability 1/101 (RFC 2782: "a small chance of being selected").
	p := []float64{1.0 / 101, 60.0 / 101, 30.0 / 101, 10.0 / 101}
	x := chiSquare(counts, p, n)
	t.Logf("first picks %v, chi-square %.2f", counts, x)
	if counts[0] == 0 {
		t.Errorf("zero-weight entry never came first in %d orderings; RFC 2782 gives it 1/101", n)
	}
	if counts[0] > n/50 {
		t.Errorf("zero-weight entry came first %d times in %d orderings; want about %d", counts[0], n, n/101)
	}
	if x >= 16.266 { // 0.001 critical value, 3 degrees of freedom
		t.Errorf("first-pick counts %v: chi-square %.2f >= 16.266 against %v", counts, x, p)
	}
}

func TestOrderAllZeroWeightsIsUniform(t *testing.T) {
	t.Parallel()
	const n = 60000
	list := []ep{{name: "a"}, {name: "b"}, {name: "c"}}
	rng := rand.New(rand.NewPCG(3, 2782))
	perms := []string{"a b c", "a c b", "b a c", "b c a", "c a b", "c b a"}
	counts := make([]int, len(perms))
	for range n {
		got := names(srv.Order(list, attr, isDown, rng.IntN))
		i := slices.Index(perms, got)
		if i < 0 {
			t.Fatalf("order %q is not a permutation", got)
		}
		counts[i]++
	}
	p := slices.Repeat([]float64{1.0 / 6}, 6)
	x := chiSquare(counts, p, n)
	t.Logf("permutation counts %v, chi-square %.2f", counts, x)
	if x >= 20.515 { // 0.001 critical value, 5 degrees of freedom
		t.Errorf("permutation counts %v: chi-square %.2f >= 20.515 against uniform", counts, x)
	}
}

// fuzzInt maps a byte to an int, with a few bytes standing for extremes.
func fuzzInt(b byte) int {
	switch b {
	case 0xff:
		return math.MaxInt
	case 0xfe:
		return math.MinInt
	case 0xfd:
		return math.MaxInt/2 + 1
	case 0xfc:
		return 65535
	}
	return int(int8(b))
}

func FuzzOrder(f *testing.F) {
	f.Add([]byte{0, 60, 0, 0, 30, 0, 0, 10, 0}, []byte{0, 75, 0, 65})
	f.Add([]byte{1, 0xff, 1, 0, 0xff, 0, 0xff, 0xfe, 1, 2, 0, 0, 0, 0xff, 0}, []byte{0x80, 0, 0x7f, 0xff})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1}, []byte{})
	f.Add([]byte{0xfe, 0xfd, 1, 0xfc, 0xfd, 0, 0x80, 0xfc, 1}, []byte{0xff, 0xff, 0x12, 0x34})
	f.Fuzz(func(t *testing.T, listBytes, rnd []byte) {
		var list []ep
		for i := 0; i+3 <= len(listBytes) && len(list) < 200; i += 3 {
			list = append(list, ep{
				name:   fmt.Sprint(len(list)),
				prio:   fuzzInt(listBytes[i]),
				weight: fuzzInt(listBytes[i+1]),
				down:   listBytes[i+2]&1 == 1,
			})
		}
		orig := slices.Clone(list)
		newIntn := func() func(int) int {
			rest := rnd
			return func(n int) int {
				if n < 1 {
					t.Fatalf("intn called with n = %d", n)
				}
				if len(rest) < 2 {
					return 0
				}
				v := int(int16(uint16(rest[0])<<8 | uint16(rest[1])))
				rest = rest[2:]
				return v
			}
		}
		got := srv.Order(list, attr, isDown, newIntn())

		if !slices.Equal(list, orig) {
			t.Fatal("Order modified its input")
		}
		if len(got) != len(list) {
			t.Fatalf("got %d endpoints, want %d", len(got), len(list))
		}
		seen := make([]bool, len(list))
		for _, e := range got {
			var i int
			if _, err := fmt.Sscan(e.name, &i); err != nil || i < 0 || i >= len(list) || seen[i] || list[i] != e {
				t.Fatalf("endpoint %+v is foreign or repeated in %v", e, got)
			}
			seen[i] = true
		}
		for i := 1; i < len(got); i++ {
			prev, cur := got[i-1], got[i]
			if prev.down && !cur.down {
				t.Fatalf("healthy %+v after down %+v", cur, prev)
			}
			if prev.down == cur.down && max(cur.prio, 0) < max(prev.prio, 0) {
				t.Fatalf("priority decreases from %+v to %+v", prev, cur)
			}
		}
		if again := srv.Order(list, attr, isDown, newIntn()); !slices.Equal(again, got) {
			t.Fatalf("same draws gave %v, then %v", got, again)
		}
	})
}

func BenchmarkOrder(b *testing.B) {
	list := []ep{
		{name: "a", prio: 0, weight: 60}, {name: "b", prio: 0, weight: 30}, {name: "c", prio: 0, weight: 10},
		{name: "d", prio: 1, weight: 0}, {name: "e", prio: 1, weight: 5, down: true},
	}
	intn := rand.New(rand.NewPCG(1, 2)).IntN
	b.ReportAllocs()
	for b.Loop() {
		srv.Order(list, attr, isDown, intn)
	}
}
