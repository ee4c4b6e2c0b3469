output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.twin.name
}

output "cluster_endpoint" {
  description = "API server endpoint of the cluster."
  value       = google_container_cluster.twin.endpoint
  sensitive   = true
}

output "get_credentials" {
  description = "Command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.twin.name} --region ${var.region} --project ${var.project_id}"
}

output "milvus_uri" {
  description = "Milvus URI for TwinModel specs (spec.vectorStore.milvusUri)."
  value       = "http://llm-twin-milvus.llm-twin.svc:19530"
}
