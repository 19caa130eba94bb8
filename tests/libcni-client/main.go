// Command libcni-client is a minimal container runtime's network half: it
// drives a CNI network list through the real libcni (Debian's
// golang-github-appc-cni-dev, libcni 1.1.2) the way containerd, CRI-O and
// podman do.
//
// It loads the network by name from a configuration directory
// (libcni.LoadConfList: *.conflist in lexical order, then *.conf/*.json
// upconverted), and runs AddNetworkList, CheckNetworkList or DelNetworkList
// for one attachment with a libcni result cache directory, so that CHECK and
// DEL get the cached ADD result as prevResult, exactly as a runtime's do.
//
//	libcni-client -confdir D -net NAME -cachedir C -plugindirs P1:P2 \
//	    -netns PATH -id ID -ifname eth0 -args 'K=V;K2=V2' \
//	    -cap '{"portMappings":[...]}' [-check-skip portmap] add|check|del
//
// ADD prints the result as libcni returns it (JSON) on stdout. CHECK and DEL
// print nothing. Any error goes to stderr, with exit status 1; when a plugin
// returned a CNI error, a last line "cni-error-code: N" names its code.
// Usage errors exit with status 2.
//
// GC and STATUS are not part of libcni 1.1.2 (they arrived with libcni 1.2).
//
// Build it offline, in GOPATH mode, against Debian's copy of libcni:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
//	    go build -o target/libcni-client ./tests/libcni-client
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

type options struct {
	confDir    string
	network    string
	cacheDir   string
	pluginDirs string
	netns      string
	id         string
	ifname     string
	args       string
	caps       string
	checkSkip  string
	timeout    time.Duration
	verb       string
	rtArgs     [][2]string
	capability map[string]interface{}
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "libcni-client: %v\n", err)
		os.Exit(2)
	}
	if err := run(opts); err != nil {
		fmt.Fprintf(os.Stderr, "libcni-client: %s: %v\n", opts.verb, err)
		var cniErr *types.Error
		if errors.As(err, &cniErr) {
			fmt.Fprintf(os.Stderr, "cni-error-code: %d\n", cniErr.Code)
		}
		os.Exit(1)
	}
}

func parseFlags(argv []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("libcni-client", flag.ContinueOnError)
	fs.StringVar(&o.confDir, "confdir", "/etc/cni/net.d", "directory of network configurations")
	fs.StringVar(&o.network, "net", "", "name of the network to load from -confdir")
	fs.StringVar(&o.cacheDir, "cachedir", "", "libcni result cache directory (required)")
	fs.StringVar(&o.pluginDirs, "plugindirs", "/opt/cni/bin", "plugin directories, ':'-separated (CNI_PATH)")
	fs.StringVar(&o.netns, "netns", "", "path of the pod's network namespace (CNI_NETNS)")
	fs.StringVar(&o.id, "id", "", "container ID (CNI_CONTAINERID)")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name in the pod (CNI_IFNAME)")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as 'K=V;K2=V2'")
	fs.StringVar(&o.caps, "cap", "", "capability arguments as a JSON object, e.g. '{\"portMappings\":[...]}'")
	fs.StringVar(&o.checkSkip, "check-skip", "", "plugin types (','-separated) left out of the list for CHECK only")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole operation")
	if err := fs.Parse(argv); err != nil {
		return nil, err
	}
	if fs.NArg() != 1 {
		return nil, fmt.Errorf("want exactly one verb (add, check or del), got %q", fs.Args())
	}
	o.verb = strings.ToLower(fs.Arg(0))
	switch o.verb {
	case "add", "check", "del":
	default:
		return nil, fmt.Errorf("unknown verb %q (want add, check or del)", o.verb)
	}
	if o.network == "" || o.cacheDir == "" || o.id == "" {
		return nil, errors.New("-net, -cachedir and -id are required")
	}
	if o.args != "" {
		for _, pair := range strings.Split(o.args, ";") {
			if pair == "" {
				continue
			}
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 || kv[0] == "" {
				return nil, fmt.Errorf("-args: %q is not K=V", pair)
			}
			o.rtArgs = append(o.rtArgs, [2]string{kv[0], kv[1]})
		}
	}
	if o.caps != "" {
		if err := json.Unmarshal([]byte(o.caps), &o.capability); err != nil {
			return nil, fmt.Errorf("-cap: %w", err)
		}
	}
	return o, nil
}

func run(o *options) error {
	list, err := libcni.LoadConfList(o.confDir, o.network)
	if err != nil {
		return fmt.Errorf("load network %q from %s: %w", o.network, o.confDir, err)
	}

	var dirs []string
	for _, d := range filepath.SplitList(o.pluginDirs) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(dirs, o.cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID:    o.id,
		NetNS:          o.netns,
		IfName:         o.ifname,
		Args:           o.rtArgs,
		CapabilityArgs: o.capability,
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	switch o.verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		out, err := json.Marshal(result)
		if err != nil {
			return fmt.Errorf("encode the result: %w", err)
		}
		fmt.Println(string(out))
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, withoutTypes(list, o.checkSkip), rt)
	default:
		return cni.DelNetworkList(ctx, list, rt)
	}
}

// withoutTypes returns list without the plugins whose type is named in skip
// (','-separated). The cached result is looked up by the list's name, which
// stays the same.
func withoutTypes(list *libcni.NetworkConfigList, skip string) *libcni.NetworkConfigList {
	if skip == "" {
		return list
	}
	skipped := map[string]bool{}
	for _, t := range strings.Split(skip, ",") {
		skipped[strings.TrimSpace(t)] = true
	}
	filtered := *list
	filtered.Plugins = nil
	for _, p := range list.Plugins {
		if !skipped[p.Network.Type] {
			filtered.Plugins = append(filtered.Plugins, p)
		}
	}
	return &filtered
}
