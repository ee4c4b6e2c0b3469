variable "project_id" {
  description = "Google Cloud project that holds the cluster."
  type        = string
}

variable "region" {
  description = "Region of the cluster (a regional cluster spreads the CPU pool over its zones)."
  type        = string
  default     = "us-central1"
}

variable "gpu_zones" {
  description = "Zones of the GPU pool: where the GPU type is offered."
  type        = list(string)
  default     = ["us-central1-a"]
}

variable "cluster_name" {
  description = "Name of the GKE cluster."
  type        = string
  default     = "llm-twin"
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (operator, gateway, retrieval, embedding, Milvus)."
  type        = string
  default     = "e2-standard-8"
}

variable "cpu_nodes" {
  description = "Minimum and maximum nodes of the CPU pool, per zone."
  type        = object({ min = number, max = number })
  default     = { min = 1, max = 4 }
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool (training jobs and generation replicas)."
  type        = string
  default     = "g2-standard-12"
}

variable "gpu_type" {
  description = "Accelerator attached to each GPU node."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per GPU node."
  type        = number
  default     = 1
}

variable "gpu_nodes" {
  description = "Minimum and maximum nodes of the GPU pool (0 lets it scale to zero)."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 2 }

  validation {
    condition     = var.gpu_nodes.min >= 0 && var.gpu_nodes.max >= var.gpu_nodes.min
    error_message = "gpu_nodes.max must be >= gpu_nodes.min >= 0."
  }
}

variable "kuberay_version" {
  description = "Version of the kuberay-operator chart."
  type        = string
  default     = "1.7.0"
}

variable "milvus_chart_version" {
  description = "Version of the Milvus chart."
  type        = string
  default     = "5.0.0"
}

variable "llm_twin_chart_path" {
  description = "Path to this repository's helm chart."
  type        = string
  default     = "../../helm/llm-twin"
}

variable "image" {
  description = "The platform image (built from the repository's Dockerfile)."
  type        = string
  default     = "ghcr.io/llm-twin/llm-twin"
}

variable "image_tag" {
  description = "Tag of the platform image."
  type        = string
  default     = "0.1.0"
}
