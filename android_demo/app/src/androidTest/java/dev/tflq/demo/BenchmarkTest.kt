package dev.tflq.demo

import android.graphics.BitmapFactory
import android.os.Build
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.json.JSONObject
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import java.io.File

/**
 * Instrumented benchmark: times the bundled model on the first sample image and writes
 * benchmark.json to the app's external files folder, where tflq's harness pulls it
 * (tflq.android.pull_instrumented_results).
 */
@RunWith(AndroidJUnit4::class)
class BenchmarkTest {
    @Test
    fun benchmarkBundledModel() {
        val context = InstrumentationRegistry.getInstrumentation().targetContext
        val runs = InstrumentationRegistry.getArguments().getString("runs")?.toInt() ?: 50
        val sample = context.assets.list(Classifier.SAMPLES_DIR)!!.sorted().first()
        val bitmap = context.assets.open("${Classifier.SAMPLES_DIR}/$sample").use { BitmapFactory.decodeStream(it) }
        val times = Classifier(context).use { it.benchmark(bitmap, runs) }
        assertTrue(times.size == runs && times.all { it > 0 })
        val json = JSONObject()
            .put("model", Classifier.MODEL_ASSET)
            .put("runs", runs)
            .put("avg_ms", times.average())
            .put("min_ms", times.minOrNull())
            .put("max_ms", times.maxOrNull())
            .put("device", Build.MODEL)
            .put("sdk", Build.VERSION.SDK_INT)
            .put("accelerator", "CPU")
        File(context.getExternalFilesDir(null), "benchmark.json").writeText(json.toString())
    }
}
