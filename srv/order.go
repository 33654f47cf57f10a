// Package srv owns the RFC 2782 ordering of Erply endpoint lists and the record of endpoints marked down for a cool-down.
package srv

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
)

// Order returns a new slice holding the elements of list in the order a client
// should try them, as RFC 2782 prescribes for SRV records:
//
//   - ascending priority;
//   - within one priority, a weighted random order made by the RFC's
//     running-sum selection: the remaining entries are arranged with every
//     zero-weight entry first (those in a uniformly random order), a number r
//     is drawn uniformly from [0, sum of their weights] inclusive, and the
//     first entry whose running weight sum is >= r is taken next. A
//     zero-weight entry is thus chosen only when r is 0, a small chance
//     (1 in sum+1) rather than never; when every remaining weight is 0 the
//     order is uniformly random;
//   - every element for which down reports true comes after all the healthy
//     ones, ordered among themselves by the same rules, so a caller that
//     walks the whole list still reaches them as a last resort.
//
// attr returns an element's priority and weight; negative values count as 0,
// and weights so large that their sum would not fit in an int are clamped to
// (math.MaxInt-1)/n for a priority holding n entries (Erply's are 0..65535).
// A nil attr treats every element as priority 0, weight 0. attr and down are
// called exactly once per element, so a down mark that changes while Order
// runs cannot make it inconsistent. A nil down means nothing is down.
//
// intn is the source of randomness with the contract of rand.IntN: it is
// called only with n >= 1 and should return a value in [0, n); a value out of
// that range is reduced modulo n rather than trusted. A nil intn means
// math/rand/v2's IntN. For each priority group in output order, Order calls
// intn(k), intn(k-1), …, intn(2) to shuffle its k zero-weight entries
// (Fisher–Yates), then intn(sum+1) once per selection while at least two
// entries and a positive weight sum remain; a choice that is already forced
// draws nothing. That fixed protocol is what lets tests script exact orders.
//
// Order never modifies list and never panics (unless attr, down or intn do).
// For an empty or nil list it returns an empty, non-nil slice.
func Order[E any](list []E, attr func(E) (priority, weight int), down func(E) bool, intn func(n int) int) []E {
	if intn == nil {
		intn = rand.IntN
	}
	items := make([]entry[E], len(list))
	for i, e := range list {
		it := entry[E]{e: e}
		if attr != nil {
			p, w := attr(e)
			it.prio, it.weight = max(p, 0), max(w, 0)
		}
		if down != nil {
			it.down = down(e)
		}
		items[i] = it
	}
	// Stable, so entries that compare equal keep the caller's order: with a
	// scripted intn the result is then a function of the input alone.
	slices.SortStableFunc(items, func(a, b entry[E]) int {
		if a.down != b.down {
			if a.down {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.prio, b.prio)
	})
	out := make([]E, 0, len(list))
	for start := 0; start < len(items); {
		end := start + 1
		for end < len(items) && items[end].down == items[start].down && items[end].prio == items[start].prio {
			end++
		}
		out = appendWeighted(out, items[start:end], intn)
		start = end
	}
	return out
}

// entry is an element of the list with its attributes read once.
type entry[E any] struct {
	e      E
	prio   int
	weight int
	down   bool
}

// appendWeighted appends the entries of one priority group (all healthy or all
// down) to out in RFC 2782 weighted order. It reorders group, which Order owns.
func appendWeighted[E any](out []E, group []entry[E], intn func(int) int) []E {
	// Clamping each weight to limit keeps the sum, and sum+1 passed to intn,
	// within an int on every platform, so nothing can overflow.
	limit := (math.MaxInt - 1) / len(group)
	sum := 0
	for i := range group {
		group[i].weight = min(group[i].weight, limit)
		sum += group[i].weight
	}

	// Zero-weight entries first (RFC 2782), the rest after, each part in the
	// caller's order; then shuffle the zero-weight part so that the one that
	// gets the r == 0 chance, and the order once only zeros remain, is
	// uniformly random rather than decided by input order.
	slices.SortStableFunc(group, func(a, b entry[E]) int {
		return cmp.Compare(min(a.weight, 1), min(b.weight, 1))
	})
	zeros := 0
	for zeros < len(group) && group[zeros].weight == 0 {
		zeros++
	}
	for i := zeros - 1; i > 0; i-- {
		j := draw(intn, i+1)
		group[i], group[j] = group[j], group[i]
	}

	rest := group
	for len(rest) > 1 && sum > 0 {
		r := draw(intn, sum+1)
		pick, run := len(rest)-1, 0
		for i := range rest {
			run += rest[i].weight
			if run >= r {
				pick = i
				break
			}
		}
		out = append(out, rest[pick].e)
		sum -= rest[pick].weight
		// Remove the pick keeping the others in place: the arrangement (zeros
		// first, in their shuffled order) stays valid for the next round.
		copy(rest[1:pick+1], rest[:pick])
		rest = rest[1:]
	}
	// One entry left, or only zero weights left in their shuffled order.
	for i := range rest {
		out = append(out, rest[i].e)
	}
	return out
}

// draw calls intn(n) for n >= 1 and maps a result outside [0, n) into it, so a
// misbehaving source cannot make Order index out of range.
func draw(intn func(int) int, n int) int {
	r := intn(n)
	if r < 0 || r >= n {
		r %= n
		if r < 0 {
			r += n
		}
	}
	return r
}
