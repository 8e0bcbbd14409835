# Configuration shared by the server and both workers of docker-compose.yaml.
# Every value that names a host uses the compose service names (db, redis, minio).
import os

from conda_store_server.storage import S3Storage

c.CondaStore.database_url = "postgresql+psycopg2://conda-store:conda-store@db:5432/conda-store"
c.CondaStore.redis_url = "redis://redis:6379/0"  # broker and result backend of the workers
c.CondaStore.store_directory = "/opt/conda-store/state"  # a volume shared by server and workers
c.CondaStore.environment_directory = "/opt/conda-store/envs/{namespace}/envs/{name}"
c.CondaStore.conda_channel_alias = "https://conda.anaconda.org"
c.CondaStore.conda_default_channels = ["conda-forge"]
c.CondaStore.conda_allowed_channels = ["conda-forge"]
c.CondaStore.conda_indexed_channels = ["conda-forge"]
c.CondaStore.build_artifacts = ["LOCKFILE", "YAML", "CONDA_PACK"]
c.CondaStore.default_uid = 1000
c.CondaStore.default_gid = 1000

c.CondaStore.storage_class = S3Storage
c.S3Storage.internal_endpoint = "minio:9000"  # how server and workers reach MinIO
c.S3Storage.external_endpoint = "localhost:9000"  # what users' presigned download URLs point at
c.S3Storage.access_key = os.environ["MINIO_ACCESS_KEY"]
c.S3Storage.secret_key = os.environ["MINIO_SECRET_KEY"]
c.S3Storage.region = "us-east-1"
c.S3Storage.bucket_name = "conda-store"
c.S3Storage.internal_secure = False
c.S3Storage.external_secure = False

c.CondaStoreServer.address = "0.0.0.0"
c.CondaStoreServer.port = 8080
# A persistent signing secret: tokens stay valid across restarts and are the same on every replica.
c.AuthenticationBackend.secret = os.environ["CONDA_STORE_SECRET"]
# DummyAuthentication lets anyone with this password in as an admin: replace it with a real
# Authentication class (OAuth) before exposing the service.
c.DummyAuthentication.password = os.environ["CONDA_STORE_PASSWORD"]

c.CondaStoreWorker.concurrency = 2
