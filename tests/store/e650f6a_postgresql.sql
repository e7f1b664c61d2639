-- The store as fedmq e650f6a made it (Base.metadata.create_all on postgresql), captured with
-- CreateTable(table).compile(dialect=...) from `git show e650f6a:store/models.py`.

CREATE TABLE jobs (
	id SERIAL NOT NULL,
	name VARCHAR(64) NOT NULL,
	run_id VARCHAR(64) NOT NULL,
	status VARCHAR(16) NOT NULL,
	task VARCHAR(32) NOT NULL,
	model VARCHAR(64) NOT NULL,
	spec JSON NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE rounds (
	id SERIAL NOT NULL,
	job_id INTEGER NOT NULL,
	number INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	aggregated_at TIMESTAMP WITH TIME ZONE,
	finished_at TIMESTAMP WITH TIME ZONE,
	num_samples INTEGER NOT NULL,
	model_digest VARCHAR(64),
	checkpoint TEXT,
	metrics JSON NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (job_id, number),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE TABLE silos (
	id SERIAL NOT NULL,
	job_id INTEGER NOT NULL,
	name VARCHAR(64) NOT NULL,
	online BOOLEAN NOT NULL,
	first_seen TIMESTAMP WITH TIME ZONE NOT NULL,
	last_seen TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (job_id, name),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE TABLE evaluations (
	id SERIAL NOT NULL,
	round_id INTEGER NOT NULL,
	silo VARCHAR(64) NOT NULL,
	num_samples INTEGER NOT NULL,
	metrics JSON NOT NULL,
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (round_id, silo),
	FOREIGN KEY(round_id) REFERENCES rounds (id)
);

CREATE TABLE updates (
	id SERIAL NOT NULL,
	job_id INTEGER NOT NULL,
	round_id INTEGER,
	silo VARCHAR(64) NOT NULL,
	claimed_round INTEGER,
	num_samples INTEGER NOT NULL,
	train_loss FLOAT,
	train_seconds FLOAT,
	bytes INTEGER NOT NULL,
	accepted BOOLEAN NOT NULL,
	reason TEXT,
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id),
	FOREIGN KEY(round_id) REFERENCES rounds (id)
);

