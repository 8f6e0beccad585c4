"""The service's HTTP surfaces: classify (`classify`, `forms`), per-model routes and the repository
extension (`models`), the Open Inference Protocol (`v2`) and the published document (`openapi`)."""
