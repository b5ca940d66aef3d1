"""The same run spread out: job-array shards (`sharding`), a local Ray closed to the network (`ray_start`),
Ray actors (`ray_batch`), Ray Data (`ray_data`), and folders watched for new images (`watch`)."""
