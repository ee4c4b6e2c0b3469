provider "google" {
  project = var.project_id
  region  = var.region
}

resource "google_container_cluster" "twin" {
  name     = var.cluster_name
  location = var.region

  # Node pools are managed separately below.
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  deletion_protection = false
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.twin.id
  location = var.region

  autoscaling {
    min_node_count = var.cpu_nodes.min
    max_node_count = var.cpu_nodes.max
  }

  node_config {
    machine_type = var.cpu_machine_type
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "llmtwin.dev/pool" = "cpu" }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  name           = "gpu"
  cluster        = google_container_cluster.twin.id
  location       = var.region
  node_locations = var.gpu_zones

  autoscaling {
    min_node_count = var.gpu_nodes.min
    max_node_count = var.gpu_nodes.max
  }

  node_config {
    machine_type = var.gpu_machine_type
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "llmtwin.dev/pool" = "gpu" }

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count

      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    # Only pods that ask for a GPU land here.
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

data "google_client_config" "current" {}

provider "helm" {
  kubernetes {
    host                   = "https://${google_container_cluster.twin.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(google_container_cluster.twin.master_auth[0].cluster_ca_certificate)
  }
}

resource "helm_release" "kuberay" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay"
  create_namespace = true
  depends_on       = [google_container_node_pool.cpu]
}

resource "helm_release" "milvus" {
  name             = "llm-twin-milvus"
  repository       = "https://zilliztech.github.io/milvus-helm/"
  chart            = "milvus"
  version          = var.milvus_chart_version
  namespace        = "llm-twin"
  create_namespace = true

  set {
    name  = "cluster.enabled"
    value = "false"
  }

  depends_on = [google_container_node_pool.cpu]
}

resource "helm_release" "llm_twin" {
  name             = "llm-twin"
  chart            = var.llm_twin_chart_path
  namespace        = "llm-twin"
  create_namespace = true

  # KubeRay and Milvus are installed by the releases above.
  set {
    name  = "kuberay-operator.enabled"
    value = "false"
  }

  set {
    name  = "milvus.enabled"
    value = "false"
  }

  set {
    name  = "image.repository"
    value = var.image
  }

  set {
    name  = "image.tag"
    value = var.image_tag
  }

  depends_on = [helm_release.kuberay, helm_release.milvus]
}
