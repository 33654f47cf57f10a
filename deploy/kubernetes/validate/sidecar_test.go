// Package validate checks deploy/kubernetes/sidecar.yaml against the real
// Kubernetes API types, decoding as strictly as the API server does.
package validate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const manifestPath = "../sidecar.yaml"

// manifest is the decoded content of sidecar.yaml.
type manifest struct {
	deployments []*appsv1.Deployment
	secrets     map[string]*corev1.Secret
	configMaps  map[string]*corev1.ConfigMap
}

// decodeStrict decodes one YAML document into v the way the API server's
// strict field validation does: duplicate keys, unknown fields and fields
// spelt in the wrong case are errors (encoding/json alone would accept the
// last two quietly).
func decodeStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(j, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func load(data []byte) (*manifest, error) {
	m := &manifest{secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{}}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if string(bytes.TrimSpace(j)) == "null" {
			continue // only comments
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(j, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		var obj interface{ GetName() string }
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			obj = &appsv1.Deployment{}
		case "v1 Secret":
			obj = &corev1.Secret{}
		case "v1 ConfigMap":
			obj = &corev1.ConfigMap{}
		default:
			return nil, fmt.Errorf("document %d: unexpected %s %s", n, tm.APIVersion, tm.Kind)
		}
		if err := decodeStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", n, tm.Kind, err)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
		case *corev1.Secret:
			m.secrets[o.Name] = o
		case *corev1.ConfigMap:
			m.configMaps[o.Name] = o
		}
	}
	return m, nil
}

func loadFile(t *testing.T) *manifest {
	t.Helper()
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := load(data)
	if err != nil {
		t.Fatalf("%s: %v", manifestPath, err)
	}
	return m
}

func TestManifestDecodesStrictly(t *testing.T) {
	m := loadFile(t)
	if len(m.deployments) != 1 || len(m.secrets) != 1 || len(m.configMaps) != 1 {
		t.Fatalf("got %d Deployments, %d Secrets, %d ConfigMaps; want one of each", len(m.deployments), len(m.secrets), len(m.configMaps))
	}
}

func TestStrictDecodingCatchesMistakes(t *testing.T) {
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, old, new, wantErr string
	}{
		{"misspelled field", "          restartPolicy: Always\n", "          restartPolicyy: Always\n", `unknown field "spec.template.spec.initContainers[0].restartPolicyy"`},
		{"field in the wrong case", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", `unknown field "spec.template.spec.initContainers[0].securityContext.readOnlyRootFileSystem"`},
		{"probe in the wrong case", "startupProbe:", "startUpProbe:", `unknown field "spec.template.spec.initContainers[0].startUpProbe"`},
		{"duplicate key", "          restartPolicy: Always\n", "          restartPolicy: Always\n          restartPolicy: Never\n", `"restartPolicy" already set`},
		{"wrong type", "replicas: 1", "replicas: one", `cannot unmarshal`},
		{"misspelled Secret field", "stringData:", "stringdata:", `unknown field "stringdata"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(data, []byte(tc.old)) {
				t.Fatalf("%s no longer contains %q; update the test", manifestPath, tc.old)
			}
			_, err := load(bytes.Replace(data, []byte(tc.old), []byte(tc.new), 1))
			if err == nil {
				t.Fatalf("mutated manifest (%q → %q) decoded without error", tc.old, tc.new)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func envOf(c *corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

func mountAt(c *corev1.Container, dir string) *corev1.VolumeMount {
	for i, vm := range c.VolumeMounts {
		if vm.MountPath == dir {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// mountHolding returns the mount of c whose directory holds p (p itself or
// below it), the deepest if several do.
func mountHolding(c *corev1.Container, p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		dir := path.Clean(vm.MountPath)
		if (p == dir || strings.HasPrefix(p, dir+"/")) && (best == nil || len(dir) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	return best
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i, v := range spec.Volumes {
		if v.Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// parseEnvFile reads the plain KEY=VALUE lines the ConfigMap uses.
func parseEnvFile(t *testing.T, s string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("env file line %d is not KEY=VALUE", i+1)
		}
		vars[k] = v
	}
	return vars
}

func TestSidecarShape(t *testing.T) {
	m := loadFile(t)
	d := m.deployments[0]
	spec := &d.Spec.Template.Spec

	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("%d init containers and %d containers, want the daemon and one app", len(spec.InitContainers), len(spec.Containers))
	}
	daemon, app := &spec.InitContainers[0], &spec.Containers[0]
	if daemon.RestartPolicy == nil || *daemon.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("the daemon is not a native sidecar (initContainers entry with restartPolicy: Always)")
	}

	t.Run("shared socket", func(t *testing.T) {
		socket := envOf(daemon)["SESSIOND_SOCKET"]
		if socket == "" || envOf(app)["SESSIOND_SOCKET"] != socket {
			t.Fatalf("SESSIOND_SOCKET: daemon %q, app %q; want the same path", socket, envOf(app)["SESSIOND_SOCKET"])
		}
		dir := path.Dir(socket)
		dm, am := mountAt(daemon, dir), mountAt(app, dir)
		if dm == nil || am == nil || dm.Name != am.Name {
			t.Fatalf("%s is not one volume mounted in both containers", dir)
		}
		if dm.ReadOnly {
			t.Error("the daemon cannot create its socket on a read-only mount")
		}
		if v := volume(spec, dm.Name); v == nil || v.EmptyDir == nil {
			t.Errorf("volume %s is not an emptyDir", dm.Name)
		}
	})

	t.Run("probes over the socket", func(t *testing.T) {
		for name, tc := range map[string]struct {
			p    *corev1.Probe
			flag string
		}{
			"startupProbe":   {daemon.StartupProbe, "--health"},
			"readinessProbe": {daemon.ReadinessProbe, "--ready"},
			"livenessProbe":  {daemon.LivenessProbe, "--health"},
		} {
			if tc.p == nil {
				t.Errorf("%s missing", name)
				continue
			}
			// kubelet probes the pod IP; the daemon listens on loopback only.
			if tc.p.HTTPGet != nil || tc.p.TCPSocket != nil || tc.p.Exec == nil {
				t.Errorf("%s must be an exec probe", name)
				continue
			}
			if want := []string{"/erply-sessiond", "get", tc.flag}; !slices.Equal(tc.p.Exec.Command, want) {
				t.Errorf("%s runs %q, want %q", name, tc.p.Exec.Command, want)
			}
		}
		addr := envOf(daemon)["SESSIOND_HTTP_ADDR"]
		if addr != "" {
			host, _, err := net.SplitHostPort(addr)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				t.Errorf("SESSIOND_HTTP_ADDR=%s is not loopback; the daemon refuses it", addr)
			}
		}
	})

	t.Run("hardening", func(t *testing.T) {
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("automountServiceAccountToken should be false")
		}
		if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
			t.Error("enableServiceLinks should be false: service links inject SESSIOND_* variables for a Service named sessiond")
		}
		pod := spec.SecurityContext
		if pod == nil {
			t.Fatal("no pod securityContext")
		}
		for _, c := range []*corev1.Container{daemon, app} {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("%s: no securityContext", c.Name)
				continue
			}
			nonRoot := sc.RunAsNonRoot
			if nonRoot == nil {
				nonRoot = pod.RunAsNonRoot
			}
			seccomp := sc.SeccompProfile
			if seccomp == nil {
				seccomp = pod.SeccompProfile
			}
			switch {
			case nonRoot == nil || !*nonRoot:
				t.Errorf("%s: runAsNonRoot not set", c.Name)
			case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("%s: root file system writable", c.Name)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Errorf("%s: privilege escalation allowed", c.Name)
			case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL"):
				t.Errorf("%s: capabilities not dropped", c.Name)
			case seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault:
				t.Errorf("%s: no RuntimeDefault seccomp profile", c.Name)
			}
		}
		// The image's USER; fsGroup gives the app the socket's group.
		if u := daemon.SecurityContext.RunAsUser; u == nil || *u != 65532 {
			t.Error("the daemon should run as 65532, the image's user")
		}
		if g := daemon.SecurityContext.RunAsGroup; g == nil || pod.FSGroup == nil || *g != *pod.FSGroup {
			t.Error("fsGroup should be the daemon's group, so the app may open the socket (mode 0660)")
		}
	})

	t.Run("resources", func(t *testing.T) {
		req, lim := daemon.Resources.Requests.Memory(), daemon.Resources.Limits.Memory()
		if req.IsZero() || lim.IsZero() {
			t.Fatalf("memory request %s / limit %s: both must be set", req, lim)
		}
		if req.Cmp(*lim) > 0 {
			t.Errorf("memory request %s above limit %s", req, lim)
		}
		if lim.Cmp(resource.MustParse("256Mi")) > 0 {
			t.Errorf("memory limit %s: the daemon needs far less", lim)
		}
	})

	t.Run("state directory", func(t *testing.T) {
		dir := envOf(daemon)["SESSIOND_STATE_DIR"]
		if dir == "" || !path.IsAbs(dir) {
			t.Fatalf("SESSIOND_STATE_DIR=%q: want an absolute path, so that a restarted container keeps its sessions", dir)
		}
		vm := mountHolding(daemon, dir)
		if vm == nil {
			t.Fatalf("SESSIOND_STATE_DIR=%s is in no mounted volume: the container's root file system is read-only", dir)
		}
		if vm.ReadOnly {
			t.Errorf("SESSIOND_STATE_DIR=%s is on a read-only mount", dir)
		}
		// kubelet makes an emptyDir world-writable (0777, or 2777 with
		// fsGroup), which the daemon refuses: it must create the directory.
		if path.Clean(vm.MountPath) == dir {
			t.Errorf("SESSIOND_STATE_DIR=%s is the mount point itself, which is writable by every user: the daemon refuses it; name a subdirectory", dir)
		}
		v := volume(spec, vm.Name)
		if v == nil || v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
			t.Errorf("volume %s is not a memory-backed emptyDir: saved session keys would reach the node's disk, or outlive the pod", vm.Name)
		}
		if sock := mountAt(daemon, path.Dir(envOf(daemon)["SESSIOND_SOCKET"])); sock != nil && sock.Name == vm.Name {
			t.Errorf("the state directory is on the socket's volume %s, which the app mounts too", vm.Name)
		}
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			if c.Name == daemon.Name {
				continue
			}
			for _, m := range c.VolumeMounts {
				if m.Name == vm.Name {
					t.Errorf("container %s mounts the state volume %s: it could read the saved session keys or plant its own", c.Name, vm.Name)
				}
			}
		}
	})

	t.Run("configuration follows the ConfigMap", func(t *testing.T) {
		if got := envOf(daemon)["SESSIOND_ENV_FILE_WATCH"]; got != "true" {
			t.Errorf("SESSIOND_ENV_FILE_WATCH=%q: nothing sends SIGHUP inside a pod, so a ConfigMap change would wait for a rollout", got)
		}
		if vm := mountAt(daemon, path.Dir(envOf(daemon)["SESSIOND_ENV_FILE"])); vm != nil && vm.SubPath != "" {
			t.Errorf("the env file's volume is mounted with subPath %q: kubelet never updates a subPath mount", vm.SubPath)
		}
		data, err := os.ReadFile(manifestPath)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("rollout restart")) {
			t.Error("the manifest still advises a rollout to apply a ConfigMap change")
		}
	})

	t.Run("configuration and secrets", func(t *testing.T) {
		envFile := envOf(daemon)["SESSIOND_ENV_FILE"]
		vm := mountAt(daemon, path.Dir(envFile))
		if vm == nil {
			t.Fatalf("SESSIOND_ENV_FILE=%s is not in a mounted volume", envFile)
		}
		v := volume(spec, vm.Name)
		if v == nil || v.ConfigMap == nil {
			t.Fatalf("SESSIOND_ENV_FILE=%s is not in a ConfigMap volume", envFile)
		}
		cm := m.configMaps[v.ConfigMap.Name]
		if cm == nil {
			t.Fatalf("ConfigMap %s is not in the manifest", v.ConfigMap.Name)
		}
		content, ok := cm.Data[path.Base(envFile)]
		if !ok {
			t.Fatalf("ConfigMap %s has no key %s", cm.Name, path.Base(envFile))
		}
		vars := parseEnvFile(t, content)
		if vars["SESSIOND_CREDENTIALS"] == "" {
			t.Error("the env file configures no credentials")
		}
		if app.SecurityContext == nil || app.SecurityContext.RunAsUser == nil {
			t.Fatal("the app sets no runAsUser, so ALLOW_UIDS cannot name it")
		}
		appUID := strconv.FormatInt(*app.SecurityContext.RunAsUser, 10)
		for k, val := range vars {
			switch {
			case strings.HasSuffix(k, "_PASSWORD") || strings.HasSuffix(k, "_PIN") || strings.HasSuffix(k, "_TOKEN"):
				t.Errorf("%s: a secret in a ConfigMap; use %s_FILE and the Secret", k, k)
			case strings.HasSuffix(k, "_FILE"):
				fm := mountAt(daemon, path.Dir(val))
				if fm == nil {
					t.Errorf("%s=%s is not in a mounted volume", k, val)
					continue
				}
				sv := volume(spec, fm.Name)
				if sv == nil || sv.Secret == nil {
					t.Errorf("%s=%s is not in a Secret volume", k, val)
					continue
				}
				s := m.secrets[sv.Secret.SecretName]
				if s == nil {
					t.Errorf("Secret %s is not in the manifest", sv.Secret.SecretName)
					continue
				}
				_, inString := s.StringData[path.Base(val)]
				_, inData := s.Data[path.Base(val)]
				if !inString && !inData {
					t.Errorf("%s=%s: Secret %s has no key %s", k, val, s.Name, path.Base(val))
				}
			case strings.HasSuffix(k, "_ALLOW_UIDS"):
				if !slices.Contains(strings.Split(val, ","), appUID) {
					t.Errorf("%s=%s does not let the app (uid %s) in", k, val, appUID)
				}
			}
		}
	})
}
