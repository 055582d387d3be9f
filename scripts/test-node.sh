# A real single-node Kubernetes v1.20.2 for the cluster suite, sourced by test-cluster.sh:
#   test-cluster.sh node build        kubelet, kube-controller-manager, kube-scheduler, kube-proxy, a static
#                                     kubectl, and the pause, busybox and kubectl images, into the cache
#   test-cluster.sh node up DIR       containerd, etcd, kube-apiserver, the four components, a bridge CNI and
#                                     a cluster DNS, all state in DIR; IMAGES="a.tar ..." imports docker-archive
#                                     tars; prints "node ready" with DIR/cp/admin.kubeconfig
#   test-cluster.sh node down DIR     stops what up started (by PID) and undoes every host change it made
#
# Everything stays on this machine: the node's address is on an interface of its own (tower-node0), pods get
# routes to the pod and Service networks only and are never forwarded anywhere but the bridge, and the
# cluster DNS answers Service names and nothing else. Needs root, cgroup v1 or v2, no systemd.

NODE_NAME=tower-node
NODE_IF=tower-node0
NODE_IP=10.250.250.1
POD_NET=10.244.0.0/24
POD_GW=10.244.0.1
SERVICE_NET=10.96.0.0/12
IMG=$CACHE/img
NODE_COMPONENTS=(kubelet kube-controller-manager kube-scheduler kube-proxy)   # and kubectl, for pods
# what the kubelet, kube-proxy and the bridge plugin set on the host; up records them, down puts them back
# what the kubelet, containerd and the CNI plugins create at fixed places whatever they are told; up notes which
# were there before, down removes the others
HOST_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)
HOST_SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_deps() {
  local missing=() c
  for c in containerd runc iptables conntrack dnsmasq umoci busybox gcc; do command -v "$c" >/dev/null || missing+=("$c"); done
  [ -x /usr/lib/cni/bridge ] || missing+=(cni)
  [ ${#missing[@]} -gt 0 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq containerd runc containernetworking-plugins iptables conntrack dnsmasq-base umoci \
    busybox-static gcc libc6-dev >&2
}

# oci NAME TAG ROOTFS CONFIG_ARGS...: an OCI layout tar of one layer, $IMG/NAME.tar
oci_image() {
  local name=$1 tag=$2 fs=$3; shift 3
  local layout=$IMG/$name-layout
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" "$fs" / >/dev/null
  umoci config --image "$layout:$tag" --os linux --architecture amd64 "$@"
  tar -C "$layout" -cf "$IMG/$name.tar.tmp" . && mv "$IMG/$name.tar.tmp" "$IMG/$name.tar"
  rm -rf "$layout"
}

node_build() {
  need_tools; node_deps
  build_components kube-apiserver "${NODE_COMPONENTS[@]}" kubectl
  mkdir -p "$IMG"
  [ -f "$IMG/pause.tar" ] && [ -f "$IMG/busybox.tar" ] && [ -f "$IMG/kubectl.tar" ] && return 0
  local fs; fs=$(mktemp -d "${TMPDIR:-/tmp}/tower-node-img.XXXXXX")
  # pause: holds the pod's namespaces, reaps orphans, ends on SIGINT or SIGTERM
  mkdir -p "$fs/pause"
  cat > "$fs/pause.c" <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void end(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, end); signal(SIGTERM, end); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  gcc -Os -static -o "$fs/pause/pause" "$fs/pause.c"
  oci_image pause 3.2 "$fs/pause" --config.entrypoint /pause
  # busybox: a shell and small tools for test pods (its wget crashes here: use nc)
  mkdir -p "$fs/bb/bin" "$fs/bb/etc" "$fs/bb/tmp" "$fs/bb/www"
  cp /bin/busybox "$fs/bb/bin/busybox"
  local a
  for a in sh ls cat echo sleep ps nc hostname id env httpd mkdir date seq head; do ln -sf busybox "$fs/bb/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$fs/bb/etc/passwd"; echo 'root:x:0:' > "$fs/bb/etc/group"
  oci_image busybox latest "$fs/bb" --config.cmd /bin/sh --config.env PATH=/bin
  cp "$CACHE/kubectl" "$fs/bb/bin/kubectl"
  oci_image kubectl latest "$fs/bb" --config.cmd /bin/sh --config.env PATH=/bin
  rm -rf "$fs"
}

ms() { echo $(( $(date +%s%N) / 1000000 )); }

node_up() {
  local s=${1:?state dir}
  mkdir -p "$s"; s=$(cd "$s" && pwd)
  [ -x "$CACHE/kubelet" ] && [ -f "$IMG/kubectl.tar" ] || { echo "test-cluster: run 'test-cluster.sh node build' first" >&2; exit 1; }
  [ ! -f "$s/host.orig" ] || { echo "test-cluster: a node is up in $s ('test-cluster.sh node down $s' first)" >&2; exit 1; }
  local t0; t0=$(ms)
  say() { echo "test-cluster: [$(( $(ms) - t0 )) ms] $*" >&2; }
  local ctd=$s/containerd sock=$s/containerd/containerd.sock run=$s/run cp=$s/cp
  mkdir -p "$ctd" "$run" "$s/cni/net.d" "$s/dns"
  local k
  for k in "${HOST_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done > "$s/host.orig"
  for k in "${HOST_PATHS[@]}"; do [ -e "$k" ] || echo "$k"; done > "$s/host.new-paths"
  # the node's address, on an interface of its own
  # (a bridge with no ports: every kernel has bridges, since the pods need one; not every kernel has dummy)
  ip link add "$NODE_IF" type bridge
  ip addr add "$NODE_IP/32" dev "$NODE_IF"
  ip link set "$NODE_IF" up
  # pods are forwarded to the bridge and nowhere else
  iptables -I FORWARD -s 10.244.0.0/16 ! -o cni0 -j DROP -m comment --comment tower-node
  iptables -I FORWARD -d 10.244.0.0/16 ! -i cni0 -j DROP -m comment --comment tower-node

  # containerd: state, socket and CNI of its own; pause 3.2 as the sandbox; root here cannot lower
  # oom_score_adj below its own, so containerd must not ask
  containerd config default | sed -e "s#^root = .*#root = \"$ctd/root\"#" -e "s#^state = .*#state = \"$ctd/state\"#" \
    -e "s#address = \"/run/containerd/containerd.sock\"#address = \"$sock\"#" \
    -e "s#sandbox_image = .*#sandbox_image = \"k8s.gcr.io/pause:3.2\"#" \
    -e "s#restrict_oom_score_adj = false#restrict_oom_score_adj = true#" \
    -e "s#bin_dir = \"/opt/cni/bin\"#bin_dir = \"/usr/lib/cni\"#" -e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$s/cni/net.d\"#" \
    > "$ctd/config.toml"
  containerd --config "$ctd/config.toml" > "$ctd/containerd.log" 2>&1 & echo $! > "$ctd/containerd.pid"
  local ctr=(ctr -a "$sock" -n k8s.io) i
  for i in $(seq 1 150); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
  "${ctr[@]}" images import --base-name k8s.gcr.io/pause "$IMG/pause.tar" >/dev/null
  "${ctr[@]}" images import --base-name docker.io/library/busybox "$IMG/busybox.tar" >/dev/null
  "${ctr[@]}" images import --base-name docker.io/library/kubectl "$IMG/kubectl.tar" >/dev/null
  local t
  for t in ${IMAGES:-}; do "${ctr[@]}" images import "$t" >/dev/null; done
  say "containerd up, images imported"
  cat > "$s/cni/net.d/10-pods.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$s/cni/ipam", "ranges": [[{"subnet": "$POD_NET"}]],
            "routes": [{"dst": "10.244.0.0/16"}, {"dst": "$SERVICE_NET"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI

  # etcd and the apiserver as the other suites start them, but on the node's address, reachable from pods
  # through the kubernetes Service, and able to reach the kubelet
  local p=$cp/pki
  NODE_APISERVER_ARGS="--bind-address=0.0.0.0 --advertise-address=$NODE_IP --endpoint-reconciler-type=lease \
--allow-privileged=true --kubelet-preferred-address-types=InternalIP \
--kubelet-client-certificate=$p/admin.crt --kubelet-client-key=$p/admin.key" start "$cp" >/dev/null
  local kc=$cp/admin.kubeconfig
  say "apiserver ready"
  echo "nameserver $POD_GW" > "$s/resolv.conf"
  cat > "$run/kubelet.yaml" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $p/ca.crt}}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$POD_GW]
resolvConf: $s/resolv.conf
evictionHard: {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"}
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 97
KCFG
  "$CACHE/kubelet" --config="$run/kubelet.yaml" --kubeconfig="$kc" --root-dir="$s/kubelet" \
    --cert-dir="$s/kubelet/pki" --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --image-service-endpoint="unix://$sock" --hostname-override=$NODE_NAME --node-ip="$NODE_IP" --oom-score-adj=0 \
    > "$run/kubelet.log" 2>&1 & echo $! > "$run/kubelet.pid"
  "$CACHE/kube-controller-manager" --kubeconfig="$kc" --authentication-kubeconfig="$kc" \
    --authorization-kubeconfig="$kc" --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --service-cluster-ip-range=$SERVICE_NET --controllers='*,-nodeipam' \
    > "$run/controller-manager.log" 2>&1 & echo $! > "$run/controller-manager.pid"
  "$CACHE/kube-scheduler" --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false \
    > "$run/scheduler.log" 2>&1 & echo $! > "$run/scheduler.pid"
  "$CACHE/kube-proxy" --kubeconfig="$kc" --proxy-mode=iptables --hostname-override=$NODE_NAME \
    --cluster-cidr=10.244.0.0/16 --oom-score-adj=0 --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
    > "$run/kube-proxy.log" 2>&1 & echo $! > "$run/kube-proxy.pid"
  export KUBECONFIG=$kc
  for i in $(seq 1 240); do
    [ "$(kubectl get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
    if [ "$i" = 240 ] || ! kill -0 "$(cat "$run/kubelet.pid")" 2>/dev/null; then
      echo "test-cluster: the node did not become Ready; see $run/kubelet.log:" >&2
      grep -E '^[EF][0-9]{4}' "$run/kubelet.log" | tail -5 >&2
      exit 1
    fi
    sleep 0.5
  done
  say "node Ready"
  # Cluster DNS: dnsmasq on the bridge's gateway answers NAME.NAMESPACE.svc[.cluster.local] of every Service
  # from a hosts file kept in step every 2 s, NXDOMAIN to anything else, and forwards nothing. The bridge
  # comes with the first pod.
  until kubectl get serviceaccount default >/dev/null 2>&1; do sleep 0.5; done
  kubectl run tower-node-bridge --image=docker.io/library/busybox:latest --image-pull-policy=Never --restart=Never \
    -- true >/dev/null
  until ip -4 addr show cni0 2>/dev/null | grep -q "$POD_GW/"; do sleep 0.5; done
  kubectl delete pod tower-node-bridge --wait=false >/dev/null
  : > "$s/dns/hosts"
  dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --user=root --listen-address=$POD_GW \
    --bind-interfaces --addn-hosts="$s/dns/hosts" --address=/#/ > "$s/dns/dnsmasq.log" 2>&1 &
  echo $! > "$s/dns/dnsmasq.pid"
  (
    exec > /dev/null 2>&1
    while kill -0 "$(cat "$s/dns/dnsmasq.pid")"; do
      kubectl get services -A -o jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}' \
        | grep -v '^None ' | grep -v '^ ' > "$s/dns/hosts.new" && ! cmp -s "$s/dns/hosts.new" "$s/dns/hosts" \
        && mv "$s/dns/hosts.new" "$s/dns/hosts" && kill -HUP "$(cat "$s/dns/dnsmasq.pid")"
      sleep 2
    done
  ) & echo $! > "$s/dns/sync.pid"
  say "cluster DNS up"
  echo "node ready $kc"
}

stop_pid() {
  local f=$1 p i
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  kill "$p" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$p" 2>/dev/null
  rm -f "$f"
}

node_down() {
  local s=${1:?state dir}
  [ -d "$s" ] || return 0
  s=$(cd "$s" && pwd)
  set +e   # every step runs, whatever failed before
  local kc=$s/cp/admin.kubeconfig run=$s/run sock=$s/containerd/containerd.sock
  if [ -f "$run/kubelet.pid" ] && kill -0 "$(cat "$run/kubelet.pid")" 2>/dev/null; then
    # pods away through the kubelet, so that it tears down their network
    kubectl --kubeconfig "$kc" delete deploy,rs,sts,ds,job,pod --all -A --grace-period=1 --wait=false >/dev/null 2>&1
    local i
    for i in $(seq 1 20); do
      [ "$(kubectl --kubeconfig "$kc" get pods -A --no-headers 2>/dev/null | wc -l)" = 0 ] && break
      sleep 1
    done
  fi
  local c
  for c in kube-proxy scheduler controller-manager kubelet; do stop_pid "$run/$c.pid"; done
  if [ -S "$sock" ]; then
    local ctr=(ctr -a "$sock" -n k8s.io) t
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1; done
    sleep 1
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks rm -f "$t" >/dev/null 2>&1; done
    for t in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers rm "$t" >/dev/null 2>&1; done
  fi
  stop_pid "$s/containerd/containerd.pid"
  local d
  for d in /proc/[0-9]*; do   # the shims of this containerd, also those of failed creates
    [ "$(cat "$d/comm" 2>/dev/null)" = containerd-shim ] && tr '\0' ' ' < "$d/cmdline" 2>/dev/null \
      | grep -q -- "-address $sock" && kill -9 "${d#/proc/}" 2>/dev/null
  done
  local n
  for n in /run/netns/cni-*; do [ -e "$n" ] && { umount "$n" 2>/dev/null; rm -f "$n"; }; done
  ip link del cni0 2>/dev/null
  ip link del "$NODE_IF" 2>/dev/null
  [ -x "$CACHE/kube-proxy" ] && "$CACHE/kube-proxy" --cleanup >/dev/null 2>&1
  local tb ch r
  for tb in filter nat mangle; do
    iptables-save -t $tb | grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)' | sed 's/^-A/-D/' | while read -r r; do eval iptables -t $tb "$r"; done
    for ch in $(iptables-save -t $tb | grep -oE '^:(KUBE|CNI)[^ ]*' | tr -d :); do iptables -t $tb -F "$ch"; done
    for ch in $(iptables-save -t $tb | grep -oE '^:(KUBE|CNI)[^ ]*' | tr -d :); do iptables -t $tb -X "$ch"; done
  done
  iptables-save -t filter | grep -- '--comment tower-node' | sed 's/^-A/-D/' | while read -r r; do eval iptables "$r"; done
  if [ -f "$s/host.orig" ]; then
    local kv
    while read -r kv; do sysctl -qw "$kv"; done < "$s/host.orig"
    rm -f "$s/host.orig"
  fi
  stop_pid "$s/dns/sync.pid"; stop_pid "$s/dns/dnsmasq.pid"
  stop "$s/cp"
  local m
  mount | awk -v k="$s/" 'index($3,k)==1 {print $3}' | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  if [ -f "$s/host.new-paths" ]; then
    local path
    while read -r path; do rm -rf "$path"; done < "$s/host.new-paths"
    rm -f "$s/host.new-paths"
  fi
  echo "node down" >&2
}

node_main() {
  case "${1:-}" in
    build) node_build ;;
    up) node_up "${2:-}" ;;
    down) node_down "${2:-}" ;;
    *) echo "usage: test-cluster.sh node build | up STATE_DIR | down STATE_DIR" >&2; exit 2 ;;
  esac
}
