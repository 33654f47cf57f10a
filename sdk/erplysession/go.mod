module github.com/erply-sessiond/erply-sessiond/sdk/erplysession

go 1.26.0

require (
	github.com/erply-sessiond/erply-sessiond v0.0.0
	github.com/erply/api-go-wrapper v1.27.6
	go.uber.org/goleak v1.3.0
)

require (
	github.com/davecgh/go-spew v1.1.1 // indirect
	github.com/kr/text v0.1.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/pmezard/go-difflib v1.0.0 // indirect
	github.com/stretchr/testify v1.11.1 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

// The provider reads the daemon through this checkout's client package; the
// tests also run this checkout's daemon and fake Erply.
replace github.com/erply-sessiond/erply-sessiond => ../..
