// The Java Kafka producer's own answer, from the broker's kafka-clients jar: for each key (hex-encoded
// bytes) the murmur2 hash Utils.murmur2 gives it and the partition BuiltInPartitioner.partitionForKey
// (what KafkaProducer uses for a keyed record) puts it on. Run with JDK 11+'s single-file launcher:
//   java -cp 'deploy/kafka/.libs/*' tests/integration/KafkaPartitionOracle.java PARTITIONS HEXKEY...
// Prints one line per key: HEXKEY HASH PARTITION.

import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;

public class KafkaPartitionOracle {
    public static void main(String[] args) {
        int partitions = Integer.parseInt(args[0]);
        HexFormat hex = HexFormat.of();
        StringBuilder out = new StringBuilder();
        for (int i = 1; i < args.length; i++) {
            byte[] key = hex.parseHex(args[i]);
            int hash = Utils.murmur2(key);
            int partition = BuiltInPartitioner.partitionForKey(key, partitions);
            if (partition != Utils.toPositive(hash) % partitions) {
                throw new IllegalStateException("partitionForKey disagrees with toPositive(murmur2) % n");
            }
            out.append(args[i]).append(' ').append(hash).append(' ').append(partition).append('\n');
        }
        System.out.print(out);
    }
}
