-- One database per service on the shared Postgres.
CREATE DATABASE labelstudio;
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
