# Long-running evidence for erply-sessiond; the ordinary tests are `go test -race ./...`
# (what .ci/run runs, the soak test in its 5-second form included).

GO ?= go
# How long each fuzz target runs.
FUZZTIME ?= 2m
# srv's FuzzOrder runs a number of executions rather than a time: with a time
# limit the Go fuzz runner can race its own deadline on this fast target and
# report a spurious "context deadline exceeded".
ORDER_FUZZTIME ?= 3000000x
# Workers per fuzz target (the default is GOMAXPROCS).
FUZZFLAGS ?= -parallel=1
# FuzzRoutes does a socket round trip per input: minimizing each new
# interesting input for the default 60 s would take most of its time.
ROUTES_MINIMIZE ?= 5s

.PHONY: soak fuzz hostile

# soak: 50 clients for SOAK_DURATION (default 5m) against 6-second sessions
# with random upstream faults; prints the totals in its last log line.
soak:
	SOAK=1 $(GO) test -race -run TestSoak -count=1 -timeout 15m -v ./internal/daemon

# hostile: the fault suite's RSS case with ten 100 MiB proxied replies
# whose status comes last (the ordinary run uses 8 MiB replies).
hostile:
	FAULT_FULL=1 $(GO) test -race -run TestFaultHostileRSS -count=1 -v ./internal/daemon

# fuzz: every fuzz target in turn. A crasher is written under the package's
# testdata/fuzz/ and fails the run; commit it as a regression test.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeReply$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./upstream
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzOrder$$' -fuzztime $(ORDER_FUZZTIME) $(FUZZFLAGS) ./srv
	$(GO) test -run '^$$' -fuzz '^FuzzRoutes$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(ROUTES_MINIMIZE) $(FUZZFLAGS) ./localapi
	$(GO) test -run '^$$' -fuzz '^FuzzInspect$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzSchedule$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./refresher
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s $(FUZZFLAGS) ./state
	$(GO) test -run '^$$' -fuzz '^FuzzInspectAgreesWithJSON$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzPickFields$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) ./upstream
