package pool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erply-sessiond/erply-sessiond/config"
)

// Update applies a reloaded configuration: added credentials log in, removed
// ones are dropped (a final snapshot with Removed is published), changed ones
// log in anew while their old session is still served, unchanged ones keep
// their sessions without a login. New entries are made whole first, then
// entries and order are swapped together under one lock, and only then is
// anything published: a reader never sees a name without its entry. It
// returns without waiting for the logins.
func (p *Pool) Update(creds []config.Credential) {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	p.mu.RLock()
	old := p.entries
	p.mu.RUnlock()

	type change struct {
		e    *entry
		cred config.Credential
	}
	next := make(map[string]*entry, len(creds))
	order := make([]string, 0, len(creds))
	var added []*entry
	var changed []change
	for _, c := range creds {
		order = append(order, c.Name)
		if e, ok := old[c.Name]; ok {
			next[c.Name] = e
			e.mu.Lock()
			same := e.cred.Equal(c)
			e.mu.Unlock()
			if !same {
				changed = append(changed, change{e, c})
			}
			continue
		}
		e := p.newEntry(c)
		next[c.Name] = e
		added = append(added, e)
	}
	var removed []*entry
	for n, e := range old {
		if _, ok := next[n]; !ok {
			removed = append(removed, e)
		}
	}

	p.mu.Lock()
	p.entries, p.order = next, order
	p.mu.Unlock()

	for _, e := range removed {
		e.cancel()
		e.timer.Stop()
		p.publish(e, func(s *Snapshot) { s.Removed = true })
		// Its series go with it: a removed credential must not look like a
		// credential that never logs in.
		p.logins.DeletePartialMatch(prometheus.Labels{"credential": e.name})
		p.failures.DeleteLabelValues(e.name)
		p.log.Info().Str("credential", e.name).Msg("credential removed by reload")
	}
	for _, ch := range changed {
		e, c := ch.e, ch.cred
		e.mu.Lock()
		e.cred = c
		e.method = p.opts.MethodFor(c)
		e.gen++
		e.mu.Unlock()
		p.publish(e, func(s *Snapshot) { s.AllowUIDs, s.AllowGIDs, s.Kind = c.AllowUIDs, c.AllowGIDs, string(c.Kind) })
		p.loginInBackground(e, whyReload)
	}
	for _, e := range added {
		p.loginInBackground(e, whyReload)
	}
}

// SecretsChanged is called after the secret files may have changed (SIGHUP):
// a credential waiting out a refused login whose secret is now different
// tries again at once. Others pick the new secret up at their next login.
func (p *Pool) SecretsChanged() {
	p.mu.RLock()
	var retry []*entry
	for _, n := range p.order {
		e := p.entries[n]
		e.mu.Lock()
		if e.refusedWith != "" && secretFingerprint(e.cred) != e.refusedWith {
			e.notBefore = time.Time{}
			retry = append(retry, e)
		}
		e.mu.Unlock()
	}
	p.mu.RUnlock()
	for _, e := range retry {
		p.loginInBackground(e, whySecret)
	}
}
